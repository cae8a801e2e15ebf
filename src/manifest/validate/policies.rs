//! Failure policies: `spec.onExit` (what an exit code means), `spec.maxFailedIndexes`
//! (how many indexes of a fan-out may fail) and the conditions of `spec.dependsOn`.
//! Every mistake names the field and the fix; the rules as validated are what the
//! reconcile decision reads (`controller::reconcile::exit_rules`).

use super::super::wire::{DependencyCondition, ExitAction, Spec};
use crate::task::TaskKey;

/// Exit codes a rule may list: 0 is success, and no runtime reports more than 255.
pub const EXIT_CODES: std::ops::RangeInclusive<i64> = 1..=255;

/// One rule of `spec.onExit`, validated: its codes within [`EXIT_CODES`], each listed by
/// no other rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExitRuleSpec {
    pub exit_codes: Vec<i32>,
    pub action: ExitAction,
}

/// `spec.onExit`: each code 1..255, listed once over all the rules, no rule empty.
pub fn on_exit(spec: &Spec, fail: &mut impl FnMut(String)) -> Vec<ExitRuleSpec> {
    let mut rules = Vec::new();
    let mut seen: std::collections::BTreeMap<i64, usize> = std::collections::BTreeMap::new();
    for (i, rule) in spec.on_exit.iter().enumerate() {
        let at = format!("spec.onExit[{i}].exitCodes");
        if rule.exit_codes.is_empty() {
            fail(format!(
                "{at}: is empty, so the rule would never apply; list the exit codes it is for (1 to 255), e.g. [42], or remove the rule"
            ));
            continue;
        }
        let mut codes = Vec::new();
        for (j, &code) in rule.exit_codes.iter().enumerate() {
            if code == 0 {
                fail(format!(
                    "{at}[{j}]: 0 is success and cannot be given a rule; list codes from 1 to 255"
                ));
            } else if !EXIT_CODES.contains(&code) {
                fail(format!(
                    "{at}[{j}]: {code} is not an exit code a container can end with; list codes from 1 to 255 (a process killed by signal N ends with 128+N)"
                ));
            } else if let Some(&first) = seen.get(&code) {
                let whose = if first == i {
                    "this rule already lists it".to_string()
                } else {
                    format!("spec.onExit[{first}] already lists it, and the first rule listing a code wins")
                };
                fail(format!(
                    "{at}[{j}]: exit code {code} is listed twice ({whose}); list each code in one rule only"
                ));
            } else {
                seen.insert(code, i);
                codes.push(code as i32);
            }
        }
        rules.push(ExitRuleSpec {
            exit_codes: codes,
            action: rule.action,
        });
    }
    rules
}

/// `spec.maxFailedIndexes`: only with a fan-out, and fewer than its indexes (with every
/// index allowed to fail, the task could never fail).
pub fn max_failed_indexes(spec: &Spec, completions: u32, fail: &mut impl FnMut(String)) -> u32 {
    let Some(max) = spec.max_failed_indexes else {
        return 0;
    };
    if completions <= 1 {
        fail(format!(
            "spec.maxFailedIndexes: {max} needs a fan-out; set spec.completions above 1, or remove maxFailedIndexes (a task of one completion fails when its container does)"
        ));
    } else if max >= completions {
        fail(format!(
            "spec.maxFailedIndexes: {max} lets all {completions} indexes fail, so the task could never fail; set at most {}",
            completions - 1
        ));
    }
    max
}

/// The dependencies of `spec.dependsOn` whose condition is `finished` (those that name
/// no task are [`super::fan`]'s to report).
pub fn finished_dependencies(spec: &Spec) -> Vec<TaskKey> {
    spec.depends_on
        .iter()
        .filter(|d| d.condition() == DependencyCondition::Finished)
        .filter_map(|d| TaskKey::parse(d.task()).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::super::{Features, TaskSpec, ValidationContext, spec_hash, validate};
    use crate::manifest::{ExitAction, RuntimeKind, parse_manifest};
    use crate::task::TaskKey;

    fn check(spec_yaml: &str) -> Result<TaskSpec, String> {
        let text = format!("apiVersion: skiff/v1\nkind: ContainerTask\nspec:\n  command: [x]\n{spec_yaml}");
        let task = parse_manifest("t.yaml", text.as_bytes()).map_err(|e| e.to_string())?;
        let ctx = ValidationContext {
            default_runtime: RuntimeKind::Process,
            allow_host_paths: &[],
            features: Features::CURRENT,
            env_is_set: None,
        };
        validate("t.yaml", "t", &task, &ctx)
            .map_err(|errs| errs.iter().map(|e| e.to_string()).collect::<Vec<_>>().join("\n"))
    }

    #[test]
    fn exit_rules_are_read_in_order() {
        let spec = check(
            "  onExit:\n    - {exitCodes: [42], action: FailTask}\n    - {exitCodes: [75, 137], action: RetryUncounted}\n    - {exitCodes: [3], action: Succeed}\n    - {exitCodes: [1, 255], action: Count}\n",
        )
        .unwrap();
        let read: Vec<(Vec<i32>, ExitAction)> = spec.on_exit.iter().map(|r| (r.exit_codes.clone(), r.action)).collect();
        assert_eq!(
            read,
            [
                (vec![42], ExitAction::FailTask),
                (vec![75, 137], ExitAction::RetryUncounted),
                (vec![3], ExitAction::Succeed),
                (vec![1, 255], ExitAction::Count),
            ]
        );
    }

    #[test]
    fn bad_exit_rules_are_invalid_naming_the_field_and_the_fix() {
        for (yaml, needles) in [
            (
                "  onExit: [{exitCodes: [], action: FailTask}]\n",
                &["spec.onExit[0].exitCodes: is empty", "list the exit codes"][..],
            ),
            (
                "  onExit: [{exitCodes: [0], action: Succeed}]\n",
                &["spec.onExit[0].exitCodes[0]: 0 is success", "from 1 to 255"][..],
            ),
            (
                "  onExit: [{exitCodes: [3, 256], action: Count}]\n",
                &["spec.onExit[0].exitCodes[1]: 256 is not an exit code", "from 1 to 255"][..],
            ),
            (
                "  onExit: [{exitCodes: [-1], action: Count}]\n",
                &["spec.onExit[0].exitCodes[0]: -1"][..],
            ),
            (
                "  onExit:\n    - {exitCodes: [42], action: FailTask}\n    - {exitCodes: [7, 42], action: Succeed}\n",
                &[
                    "spec.onExit[1].exitCodes[1]: exit code 42 is listed twice",
                    "spec.onExit[0] already lists it",
                    "list each code in one rule only",
                ][..],
            ),
            (
                "  onExit: [{exitCodes: [9, 9], action: Count}]\n",
                &["spec.onExit[0].exitCodes[1]: exit code 9 is listed twice (this rule already lists it)"][..],
            ),
        ] {
            let err = check(yaml).unwrap_err();
            for needle in needles {
                assert!(err.contains(needle), "{yaml}: {err}");
            }
        }
        let err = check("  onExit: [{exitCodes: [1], action: Retry}]\n").unwrap_err();
        assert!(err.contains("FailTask") && err.contains("RetryUncounted"), "{err}");
        let err = check("  onExit: [{exitCode: [1], action: Count}]\n").unwrap_err();
        assert!(err.contains("exitCode"), "{err}");
    }

    #[test]
    fn max_failed_indexes_needs_a_fan_out_and_fewer_than_its_indexes() {
        assert_eq!(
            check("  completions: 6\n  maxFailedIndexes: 1\n")
                .unwrap()
                .max_failed_indexes,
            1
        );
        assert_eq!(check("  completions: 6\n").unwrap().max_failed_indexes, 0);
        let err = check("  maxFailedIndexes: 1\n").unwrap_err();
        assert!(
            err.contains("spec.maxFailedIndexes: 1 needs a fan-out; set spec.completions above 1"),
            "{err}"
        );
        let err = check("  completions: 3\n  maxFailedIndexes: 3\n").unwrap_err();
        assert!(
            err.contains("lets all 3 indexes fail") && err.contains("set at most 2"),
            "{err}"
        );
    }

    #[test]
    fn depends_on_takes_names_and_conditions_and_the_plain_form_hashes_alike() {
        let spec =
            check("  dependsOn: [a, {task: b, condition: finished}, {task: c, condition: succeeded}, {task: d}]\n")
                .unwrap();
        assert_eq!(
            spec.depends_on,
            ["a", "b", "c", "d"].map(TaskKey::new),
            "every entry is a dependency"
        );
        assert_eq!(spec.finished_dependencies, [TaskKey::new("b")]);
        let plain = check("  dependsOn: [a, c]\n").unwrap();
        let spelled = check("  dependsOn: [a, {task: c, condition: succeeded}]\n").unwrap();
        assert_eq!(plain.spec_hash, spelled.spec_hash, "the same desired state");
        let finished = check("  dependsOn: [a, {task: c, condition: finished}]\n").unwrap();
        assert_ne!(plain.spec_hash, finished.spec_hash);
        let _ = spec_hash;

        let err = check("  dependsOn: [{task: b, condition: always}]\n").unwrap_err();
        assert!(err.contains("succeeded") && err.contains("finished"), "{err}");
        let err = check("  dependsOn: [{name: b}]\n").unwrap_err();
        assert!(err.contains("name"), "{err}");
        let err = check("  dependsOn: [{task: ../b}]\n").unwrap_err();
        assert!(err.contains("spec.dependsOn[0]"), "{err}");
    }
}
