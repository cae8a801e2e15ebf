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
    let stats: Vec<_> = (0..40)
        .map(|seed| run(seed).map_err(|f| f.to_string()).unwrap().stats)
        .collect();
    let ruled: u64 = stats.iter().map(|s| s.exit_rule_writes).sum();
    let tolerated: u64 = stats.iter().map(|s| s.tolerated_failures).sum();
    assert!(
        ruled > 20,
        "only {ruled} status writes with an exit rule applied in 40 schedules"
    );
    assert!(
        tolerated > 0,
        "no fan-out succeeded with failed indexes in 40 schedules"
    );
}

#[test]
fn a_replica_claims_a_scheduled_task_before_starting_its_next_run() {
    // Seed 72627 (two replicas): a replica started run 2 from a Succeeded status without
    // taking the lease, the other deleted the status of the deleted manifest, and the
    // create landed after it.
    run(72627).map_err(|f| f.to_string()).unwrap();
}
