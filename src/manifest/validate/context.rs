//! What validation knows of the controller it validates for: which parts of the contract
//! this build acts on, the default runtime, the allowed host paths, which variables are set.

use crate::manifest::wire::RuntimeKind;
use std::path::PathBuf;

/// Why a field with a NUL is refused: the OS ends every argument, variable and path at it.
pub(super) const NUL: &str = "contains a NUL character (\\0), which no program, variable or path can hold; remove it";

/// Which parts of the contract this build acts on. A manifest that needs a part that is
/// not here is `Invalid` with a message saying so, never silently half-run.
#[derive(Debug, Clone, Copy, Default)]
pub struct Features {
    pub docker: bool,
    pub aci: bool,
    pub event_completion: bool,
    pub fan_out: bool,
    pub depends_on: bool,
}

impl Features {
    /// What this version of skiff implements.
    pub const CURRENT: Features = Features {
        docker: true,
        aci: true,
        // The controller narrows this to whether it serves the callback route.
        event_completion: true,
        fan_out: true,
        depends_on: true,
    };

    /// What a controller with these runtimes enabled, and with or without the callback
    /// route, can run.
    pub fn enabled(runtimes: impl IntoIterator<Item = RuntimeKind>, event_completion: bool) -> Features {
        let runtimes: Vec<RuntimeKind> = runtimes.into_iter().collect();
        Features {
            docker: runtimes.contains(&RuntimeKind::Docker),
            aci: runtimes.contains(&RuntimeKind::Aci),
            event_completion,
            ..Features::CURRENT
        }
    }
}

/// What validation needs to know about the controller.
pub struct ValidationContext<'a> {
    /// `--runtime`: used when `spec.runtime` is absent.
    pub default_runtime: RuntimeKind,
    /// `--allow-host-path` prefixes.
    pub allow_host_paths: &'a [PathBuf],
    pub features: Features,
    /// Whether a variable is set in the controller's environment; `None` skips the
    /// check (as `skiff validate` does, since it does not run where the controller runs).
    pub env_is_set: Option<&'a dyn Fn(&str) -> bool>,
}
