//! What each runtime accepts of a spec, said at validation: whether the runtime is there
//! at all, the image (process: ignored, with a note; docker and aci: required), the network
//! (docker only), and where volumes come from (hostPath: process and docker, under
//! `--allow-host-path`, unmoved on process; azureFile: aci). ACI's own limits are [`super::aci`].

use super::context::{Features, NUL, ValidationContext};
use super::values::is_allowed_host_path;
use crate::manifest::wire::{RuntimeKind, Spec};
use std::path::Path;

/// The runtime the task runs on, and whether this controller has it.
pub(super) fn runtime(
    spec: &Spec,
    ctx: &ValidationContext<'_>,
    notes: &mut Vec<String>,
    fail: &mut impl FnMut(String),
) -> RuntimeKind {
    let runtime = spec.runtime.unwrap_or(ctx.default_runtime);
    let runtime_ready = match runtime {
        RuntimeKind::Process => true,
        RuntimeKind::Docker => ctx.features.docker,
        RuntimeKind::Aci => ctx.features.aci,
    };
    if !runtime_ready && runtime == RuntimeKind::Aci && Features::CURRENT.aci {
        fail(
            "spec.runtime: the aci runtime is not configured in this controller; start it with --aci-resource-group, --aci-location and --aci-subscription-id (or AZURE_SUBSCRIPTION_ID)"
                .into(),
        );
    } else if !runtime_ready {
        fail(format!(
            "spec.runtime: the {runtime} runtime is not supported yet by this version of skiff; use `runtime: process`"
        ));
    }
    match runtime {
        RuntimeKind::Process => {
            if spec.command.is_empty() {
                fail("spec.command: the process runtime runs a command on the host and none is given; add e.g. `command: [sh, -c, \"echo hello\"]`".into());
            }
            let mut ignored = Vec::new();
            if spec.image.is_some() {
                ignored.push("image");
            }
            if spec.resources.is_some() {
                ignored.push("resources");
            }
            if !ignored.is_empty() {
                notes.push(format!(
                    "the process runtime ignores {} (the host is the image)",
                    ignored.join(" and ")
                ));
            }
        }
        RuntimeKind::Docker | RuntimeKind::Aci => {
            if spec.image.as_deref().is_none_or(|image| image.trim().is_empty()) {
                fail(format!(
                    "spec.image: the {runtime} runtime needs an image; add e.g. `image: busybox`"
                ));
            }
        }
    }
    if let Some(network) = &spec.network {
        if runtime != RuntimeKind::Docker {
            fail(format!(
                "spec.network: is for the docker runtime only; remove it (this task runs on {runtime})"
            ));
        } else if network.trim().is_empty() {
            fail("spec.network: is empty; write host, none, or a network's name".into());
        }
    }
    runtime
}

/// Each volume: a unique name, an absolute mount path, and a source the runtime can mount.
pub(super) fn volumes(spec: &Spec, runtime: RuntimeKind, ctx: &ValidationContext<'_>, fail: &mut impl FnMut(String)) {
    let mut volume_names = std::collections::HashSet::new();
    for (i, volume) in spec.volumes.iter().enumerate() {
        let at = format!("spec.volumes[{i}]");
        if volume.name.trim().is_empty() {
            fail(format!("{at}.name: is empty; name the volume"));
        } else if !volume_names.insert(volume.name.clone()) {
            fail(format!(
                "{at}.name: {} is used twice; volume names must be unique",
                volume.name
            ));
        }
        if volume.mount_path.contains('\0') || volume.host_path.as_deref().is_some_and(|h| h.contains('\0')) {
            fail(format!("{at}: a path {NUL}"));
        } else if !volume.mount_path.starts_with('/') {
            fail(format!(
                "{at}.mountPath: {:?} must be an absolute path, e.g. /data",
                volume.mount_path
            ));
        }
        match (&volume.host_path, &volume.azure_file) {
            (Some(host), None) => {
                if runtime == RuntimeKind::Aci {
                    fail(format!(
                        "{at}.hostPath: the aci runtime cannot mount host paths; use azureFile"
                    ));
                } else if !host.starts_with('/') {
                    fail(format!("{at}.hostPath: {host:?} must be an absolute path"));
                } else if !is_allowed_host_path(Path::new(host), ctx.allow_host_paths) {
                    fail(format!(
                        "{at}.hostPath: {host} is not under an allowed prefix; start the controller with `--allow-host-path {host}` (or a parent folder)"
                    ));
                } else if runtime == RuntimeKind::Process && volume.mount_path != *host {
                    fail(format!(
                        "{at}.mountPath: the process runtime cannot remap host paths; set mountPath to {host}, or use the docker runtime"
                    ));
                }
            }
            (None, Some(_)) => {
                if runtime != RuntimeKind::Aci {
                    fail(format!(
                        "{at}.azureFile: azureFile volumes work only on the aci runtime; use hostPath"
                    ));
                }
            }
            (Some(_), Some(_)) => fail(format!("{at}: has both hostPath and azureFile; keep one")),
            (None, None) => fail(format!(
                "{at}: has no source; add hostPath (docker, process) or azureFile (aci)"
            )),
        }
    }
}
