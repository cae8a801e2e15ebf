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
fn two_thousand_schedules_keep_every_invariant() {
    let failures = run_many(0, 2_000, 2);
    if let Some(first) = failures.first() {
        panic!("{} of 2000 schedules failed; the first:\n{first}", failures.len());
    }
}
