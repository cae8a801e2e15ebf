use super::*;

#[test]
fn one_seed_replays_exactly() {
    for seed in [1, 7, 42, 1234] {
        let a = run(seed).map_err(|f| f.to_string()).unwrap();
        let b = run(seed).map_err(|f| f.to_string()).unwrap();
        assert_eq!(a.trace, b.trace, "seed {seed} ran two ways");
    }
}

#[test]
fn five_hundred_schedules_keep_every_invariant() {
    // Debug builds run some 15 schedules a second per thread; `scripts/simulate` runs
    // the hundred thousand in release.
    let failures = run_many(0, 500, 2);
    if let Some(first) = failures.first() {
        panic!("{} of 500 schedules failed; the first:\n{first}", failures.len());
    }
}

#[test]
fn schedules_run_scheduled_tasks() {
    let made: u64 = (0..40)
        .map(|seed| run(seed).map_err(|f| f.to_string()).unwrap().stats.scheduled_creates)
        .sum();
    assert!(made > 20, "only {made} containers of scheduled runs in 40 schedules");
}

#[test]
fn schedules_exercise_exit_rules_and_tolerated_failed_indexes() {
    let stats: Vec<_> = (0..80)
        .map(|seed| run(seed).map_err(|f| f.to_string()).unwrap().stats)
        .collect();
    let ruled: u64 = stats.iter().map(|s| s.exit_rule_writes).sum();
    let tolerated: u64 = stats.iter().map(|s| s.tolerated_failures).sum();
    assert!(
        ruled > 20,
        "only {ruled} status writes with an exit rule applied in 80 schedules"
    );
    assert!(
        tolerated > 0,
        "no fan-out succeeded with failed indexes in 80 schedules"
    );
}

/// Tasks with `heartbeatTimeout` under `concurrencyPolicy: Allow` are generated, and their
/// overlapping runs' silent attempts fail on their own.
#[test]
fn schedules_exercise_heartbeat_timeouts_of_overlapping_runs() {
    let silent: u64 = (0..40)
        .map(|seed| {
            run(seed)
                .map_err(|f| f.to_string())
                .unwrap()
                .stats
                .overlapping_heartbeat_timeouts
        })
        .sum();
    assert!(
        silent > 0,
        "{silent} status writes with an overlapping run failed HeartbeatTimeout in 40 schedules"
    );
}

#[test]
fn a_replica_claims_a_scheduled_task_before_starting_its_next_run() {
    // Seed 72627 (two replicas): a replica started run 2 from a Succeeded status without
    // taking the lease, the other deleted the status of the deleted manifest, and the
    // create landed after it.
    run(72627).map_err(|f| f.to_string()).unwrap();
}

#[test]
fn dst_schedules_cross_the_change_with_crons_at_the_times_it_moves() {
    use super::schedule::Dst;
    for dst in [Dst::Spring, Dst::Fall] {
        let change = dst.change();
        let local = |t: crate::status::Timestamp| {
            t.with_timezone(&chrono_tz::Europe::Paris)
                .format("%H:%M:%S")
                .to_string()
        };
        // The instants are the changes themselves.
        let before = local(change - chrono::Duration::seconds(1));
        let after = local(change);
        match dst {
            Dst::Spring => assert_eq!((before.as_str(), after.as_str()), ("01:59:59", "03:00:00")),
            Dst::Fall => assert_eq!((before.as_str(), after.as_str()), ("02:59:59", "02:00:00")),
        }
        // Each cron parses and fires within minutes of the run's start.
        let start = change - chrono::Duration::seconds(60);
        let parse = |cron: &str| crate::schedule::Schedule::parse(cron, Some("Europe/Paris")).unwrap();
        for cron in dst.crons() {
            let next = parse(cron).next_after(start).unwrap();
            // An interval job in the hour the spring change removes waits for tomorrow; a
            // fixed 02:00 whose first instance came before the run does not run again at
            // the repeat.
            let limit = match (dst, *cron) {
                (Dst::Spring, "*/15 * 2 * * *") | (Dst::Fall, "0 0 2 * * *") => chrono::Duration::hours(25),
                _ => chrono::Duration::hours(2),
            };
            assert!(next <= change + limit, "{dst:?} {cron}: next at {next}");
        }
        // As cron(8): a fixed time in the gap runs at the first instant after it; a
        // repeated fixed time runs once, a repeated interval in both instances.
        let secs = chrono::Duration::seconds;
        match dst {
            Dst::Spring => assert_eq!(parse("0 30 2 * * *").next_after(start), Some(change)),
            Dst::Fall => {
                let once = parse("30 59 2 * * *");
                assert_eq!(once.next_after(start), Some(change - secs(30)));
                assert!(once.next_after(change - secs(30)).unwrap() > change + chrono::Duration::hours(2));
                assert_ne!(parse("0 0 2 * * *").next_after(start), Some(change));
                let both = parse("*/10 59 2 * * *");
                assert_eq!(both.next_after(change - secs(10)), Some(change + secs(3600 - 60)));
            }
        }
    }
    // Seeds of both kinds run, and schedules with zones make containers.
    let seeds: Vec<u64> = (0..200).filter(|s| Dst::for_seed(*s).is_some()).collect();
    assert!(seeds.len() >= 70);
    let mut zoned = 0;
    for seed in seeds {
        let stats = run(seed).map_err(|f| f.to_string()).unwrap().stats;
        zoned += stats.zoned_scheduled_creates;
    }
    assert!(zoned > 5, "only {zoned} runs of DST crons in 80 schedules");
}

#[test]
fn a_trigger_held_back_with_times_missed_while_down_hides_none_of_them() {
    // Seed 1731 (historyLimit 1): a trigger held back under Forbid was folded in with
    // the times missed during an outage, as an upside-down range that covered none.
    run(1731).map_err(|f| f.to_string()).unwrap();
}

#[test]
fn a_trigger_in_the_millisecond_of_a_scheduled_time_is_a_run_of_its_own() {
    // Seed 12825 (Allow, two replicas): `skiff trigger` 0.9 ms after a scheduled time
    // started run 3 beside run 2 of that time; both rightly ran, and the check of
    // "once per scheduled time" took the trigger's time for the scheduled one's.
    run(12825).map_err(|f| f.to_string()).unwrap();
}

#[test]
fn a_name_deleted_then_created_again_in_one_pass_keeps_its_slot() {
    // Seed 106 (a fan-out naming semaphore gpu=1, its spec edited while it ran): once a
    // pass that deletes a container frees its slot at once, the next pass deleted a stale
    // container under the name of the attempt it then created, and the slot went free
    // under the new container; a second index started beside it.
    run(106).map_err(|f| f.to_string()).unwrap();
}
