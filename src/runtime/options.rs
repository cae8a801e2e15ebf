//! What only one runtime understands, kept apart from the [`ContainerSpec`](super::ContainerSpec)
//! every runtime reads: a working directory on the host (process), a network mode and host
//! mounts (docker), Azure Files shares and a location (aci). The controller hands the
//! task's spec and the folder of its manifest to [`RuntimeOptions::for_task`]; the runtime
//! the task names turns them into its own options, and nothing else ever sees them.

use super::{AzureFileMount, Mount};
use crate::manifest::{RuntimeKind, TaskSpec};
use std::path::PathBuf;

/// The options of one runtime: each runtime reads its own variant and refuses another's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RuntimeOptions {
    Process {
        /// Where the command runs: the task's `workingDir`, relative to the manifest's
        /// folder, or that folder itself (`None` when the task has no local folder).
        working_dir: Option<PathBuf>,
    },
    Docker {
        /// The network mode; `None` leaves it to `--docker-network` (or the engine).
        network: Option<String>,
        /// Host folders mounted into the container; already checked against
        /// `--allow-host-path`.
        mounts: Vec<Mount>,
        /// The container's own path, as written in the manifest.
        working_dir: Option<String>,
    },
    Aci {
        /// Azure Files shares.
        azure_files: Vec<AzureFileMount>,
        /// Where the group is made, when the task names its own location.
        location: Option<String>,
        /// The group's managed identity and subnets (`spec.aci`).
        extras: crate::manifest::AciExtras,
    },
}

impl Default for RuntimeOptions {
    /// The embedded default runtime's, with nothing set.
    fn default() -> Self {
        RuntimeOptions::Process { working_dir: None }
    }
}

impl RuntimeOptions {
    /// The options of the runtime `task` names, for container `container`, whose manifest
    /// lies in `manifest_dir` (when it lies in a local folder). An error says what that
    /// runtime cannot do (a Permanent create failure).
    pub fn for_task(task: &TaskSpec, container: &str, manifest_dir: Option<PathBuf>) -> Result<Self, String> {
        match task.runtime {
            RuntimeKind::Process => Ok(super::process::options(task, manifest_dir)),
            RuntimeKind::Docker => Ok(super::docker::options(task)),
            RuntimeKind::Aci => super::aci::options(task, container),
        }
    }

    /// The runtime these options are for.
    pub fn kind(&self) -> RuntimeKind {
        match self {
            RuntimeOptions::Process { .. } => RuntimeKind::Process,
            RuntimeOptions::Docker { .. } => RuntimeKind::Docker,
            RuntimeOptions::Aci { .. } => RuntimeKind::Aci,
        }
    }

    /// Whether a path the OS would be given holds a NUL (no process can be given one).
    pub fn has_nul(&self) -> bool {
        match self {
            RuntimeOptions::Process { working_dir } => working_dir
                .as_ref()
                .is_some_and(|dir| dir.as_os_str().as_encoded_bytes().contains(&0)),
            RuntimeOptions::Docker { working_dir, .. } => working_dir.as_ref().is_some_and(|dir| dir.contains('\0')),
            RuntimeOptions::Aci { .. } => false,
        }
    }

    /// The error a runtime of kind `runtime` answers when handed another runtime's options
    /// for container `name` (a mistake of the caller's: retrying cannot help).
    pub(crate) fn mismatch(&self, runtime: RuntimeKind, name: &str) -> super::RuntimeError {
        super::RuntimeError::Permanent {
            reason: crate::status::Reason::CreateFailed,
            message: format!(
                "{runtime}: {name}: the container was described for the {} runtime, not this one",
                self.kind()
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::{Features, ValidationContext, parse_manifest, validate};
    use std::path::Path;

    fn task(runtime: &str, extra: &str, allow: &[PathBuf]) -> TaskSpec {
        let text = format!(
            "apiVersion: skiff/v1\nkind: ContainerTask\nspec:\n  runtime: {runtime}\n  image: busybox\n  command: [x]\n{extra}"
        );
        let manifest = parse_manifest("t.yaml", text.as_bytes()).unwrap();
        let ctx = ValidationContext {
            default_runtime: RuntimeKind::Process,
            allow_host_paths: allow,
            features: Features::CURRENT,
            env_is_set: None,
        };
        validate("t.yaml", "t", &manifest, &ctx).unwrap()
    }

    #[test]
    fn a_process_working_dir_is_the_manifest_folders_and_a_container_one_is_as_written() {
        let base = Some(PathBuf::from("/tasks/here"));
        let process =
            |extra: &str, base: Option<PathBuf>| RuntimeOptions::for_task(&task("process", extra, &[]), "c", base);
        assert_eq!(
            process("  workingDir: sub\n", base.clone()),
            Ok(RuntimeOptions::Process {
                working_dir: Some(PathBuf::from("/tasks/here/sub"))
            })
        );
        assert_eq!(
            process("  workingDir: /abs\n", base.clone()),
            Ok(RuntimeOptions::Process {
                working_dir: Some(PathBuf::from("/abs"))
            })
        );
        assert_eq!(
            process("", base.clone()),
            Ok(RuntimeOptions::Process {
                working_dir: Some(PathBuf::from("/tasks/here"))
            })
        );
        assert_eq!(
            process("  workingDir: sub\n", None),
            Ok(RuntimeOptions::Process {
                working_dir: Some(PathBuf::from("sub"))
            })
        );
        assert_eq!(process("", None), Ok(RuntimeOptions::Process { working_dir: None }));
        let allow = [PathBuf::from("/srv")];
        let docker = task(
            "docker",
            "  workingDir: rel\n  network: none\n  volumes: [{name: d, mountPath: /data, hostPath: /srv/d, readOnly: true}]\n",
            &allow,
        );
        assert_eq!(
            RuntimeOptions::for_task(&docker, "c", base),
            Ok(RuntimeOptions::Docker {
                network: Some("none".into()),
                mounts: vec![Mount {
                    host_path: Path::new("/srv/d").into(),
                    mount_path: "/data".into(),
                    read_only: true
                }],
                working_dir: Some("rel".into()),
            })
        );
    }

    #[test]
    fn aci_options_carry_its_shares_and_location() {
        let aci = task(
            "aci",
            "  aci: {location: westeurope}\n  volumes: [{name: s, mountPath: /out, azureFile: {shareName: results, storageAccountName: skiffdata, storageAccountKeyFrom: {env: K}}}]\n",
            &[],
        );
        let Ok(RuntimeOptions::Aci {
            azure_files, location, ..
        }) = RuntimeOptions::for_task(&aci, "c", None)
        else {
            panic!("aci options expected");
        };
        assert_eq!(location.as_deref(), Some("westeurope"));
        assert_eq!(azure_files.len(), 1);
        assert_eq!(azure_files[0].storage_account_key_env, "K");
        assert_eq!(azure_files[0].share_name, "results");
    }
}
