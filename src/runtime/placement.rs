//! How two replicas' placements of one runtime's containers differ, in words: what sets
//! them apart and what the operator does to make them one. Each runtime knows what its
//! placement is made of; the controller only passes the words on.

use super::Placement;
use crate::manifest::RuntimeKind;

/// What sets two placements apart, and how to make them one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Difference {
    /// E.g. "runs processes on another machine" (said of the other replica).
    pub what: &'static str,
    /// E.g. "give the replicas one --state-dir".
    pub remedy: &'static str,
}

impl Placement {
    /// How `theirs` differs from this placement, both of the runtime named `runtime` (as
    /// replicas publish it: [`RuntimeKind::as_str`]). Only meaningful when they differ.
    pub fn difference(&self, runtime: &str, theirs: &Placement) -> Difference {
        let (what, remedy) = match [RuntimeKind::Process, RuntimeKind::Docker, RuntimeKind::Aci]
            .into_iter()
            .find(|kind| kind.as_str() == runtime)
        {
            Some(RuntimeKind::Process) if self.host != theirs.host => (
                "runs processes on another machine",
                "run the replicas on one machine with one --state-dir",
            ),
            Some(RuntimeKind::Process) => (
                "runs processes under another state folder",
                "give the replicas one --state-dir",
            ),
            Some(RuntimeKind::Docker) if self.engine_id != theirs.engine_id => (
                "runs docker containers on another engine",
                "give the replicas one Docker engine and one --state-dir path",
            ),
            Some(RuntimeKind::Docker) => (
                "labels its docker containers with another state folder",
                "give the replicas one --state-dir path",
            ),
            Some(RuntimeKind::Aci)
                if (&self.subscription_id, &self.resource_group)
                    != (&theirs.subscription_id, &theirs.resource_group) =>
            {
                (
                    "makes ACI container groups in another subscription or resource group",
                    "give the replicas one subscription and resource group, and one aci-owner",
                )
            }
            Some(RuntimeKind::Aci) => (
                "tags its ACI container groups with another owner",
                "give the replicas one state folder's aci-owner",
            ),
            None => ("places containers elsewhere", "give the replicas one placement"),
        };
        Difference { what, remedy }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_runtime_says_what_differs() {
        let here = Placement::process("s1", "h");
        let engine = Placement::docker("E1", "/s");
        let group = Placement::aci("S", "G", "o");
        let table = [
            (
                "process",
                &here,
                Placement::process("s2", "h"),
                "runs processes under another state folder",
            ),
            (
                "process",
                &here,
                Placement::process("s1", "far"),
                "runs processes on another machine",
            ),
            (
                "docker",
                &engine,
                Placement::docker("E2", "/s"),
                "runs docker containers on another engine",
            ),
            (
                "docker",
                &engine,
                Placement::docker("E1", "/t"),
                "labels its docker containers with another state folder",
            ),
            (
                "aci",
                &group,
                Placement::aci("S", "H", "o"),
                "makes ACI container groups in another subscription or resource group",
            ),
            (
                "aci",
                &group,
                Placement::aci("s", "g", "p"),
                "tags its ACI container groups with another owner",
            ),
            ("other", &group, here.clone(), "places containers elsewhere"),
        ];
        for (runtime, mine, theirs, what) in table {
            assert_eq!(
                mine.difference(runtime, &theirs).what,
                what,
                "{runtime}: {mine} / {theirs}"
            );
        }
    }
}
