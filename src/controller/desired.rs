//! Reading what a manifest asks for: parsed off the async workers, validated, cached
//! while its bytes do not change, and not judged while it is probably being written.

use super::{SETTLE_TIME, Shared};
use crate::controller::reconcile::Desired;
use crate::manifest::{self, ValidationContext};
use crate::store::{ManifestRead, StoreError};
use crate::task::TaskKey;
use std::path::PathBuf;
use std::time::SystemTime;

/// Manifests up to this size are parsed on the async worker that read them: bounded
/// work (a few tens of microseconds), where the blocking pool's round trip is dearer.
const INLINE_PARSE_BYTES: usize = 4096;

/// What the manifest asks for, and where it came from.
pub(super) struct DesiredRead {
    pub(super) desired: Desired,
    /// The manifest's file, as the user names it.
    pub(super) file: Option<String>,
    /// The manifest's folder on this machine: the process runtime's default working dir.
    pub(super) local_dir: Option<PathBuf>,
}

/// Judges what the manifest read asks for. `None`: the file is probably still being
/// written.
pub(super) async fn read_desired(
    shared: &Shared,
    key: &TaskKey,
    read: ManifestRead,
) -> Result<Option<DesiredRead>, StoreError> {
    let stem = key.as_str().rsplit('/').next().unwrap_or(key.as_str()).to_string();
    let plain = |desired: Desired| {
        Ok(Some(DesiredRead {
            desired,
            file: None,
            local_dir: None,
        }))
    };
    let (file, bytes, modified, local_dir) = match read {
        ManifestRead::Missing => return plain(Desired::Absent),
        ManifestRead::Conflict { files } => {
            return plain(Desired::Invalid {
                name: stem,
                message: format!(
                    "{}: these files all define task {key}; keep one of them (rename or delete the others)",
                    files.join(", ")
                ),
            });
        }
        ManifestRead::Unreadable { file, message } => {
            return plain(Desired::Invalid {
                name: stem,
                message: format!("{file}: {message}"),
            });
        }
        ManifestRead::Found {
            file,
            bytes,
            modified,
            local_dir,
        } => (file, bytes, modified, local_dir),
    };
    let cached = shared.memory(key, |m| match &m.validated {
        Some((seen, spec)) if *seen == bytes => Some(spec.clone()),
        _ => None,
    });
    if let Some(spec) = cached {
        return Ok(Some(DesiredRead {
            desired: Desired::Valid(spec),
            file: Some(file),
            local_dir,
        }));
    }
    // Parsing is CPU work on untrusted input: keep it off the async workers.
    let default_runtime = shared.config.default_runtime;
    let allow_host_paths = shared.config.allow_host_paths.clone();
    let features = shared.features();
    let semaphores = shared.config.semaphores.clone();
    let name_file = file.clone();
    let parsed_bytes = bytes.clone();
    let judge = move || {
        let task = manifest::parse_manifest(&name_file, &bytes).map_err(|err| (stem.clone(), err.to_string()))?;
        let env_is_set = |var: &str| std::env::var_os(var).is_some();
        let ctx = ValidationContext {
            default_runtime,
            allow_host_paths: &allow_host_paths,
            features,
            env_is_set: Some(&env_is_set),
        };
        let validated = manifest::validate(&name_file, &stem, &task, &ctx).and_then(|spec| {
            let undefined = manifest::undefined_semaphores(&name_file, &spec, &semaphores);
            if undefined.is_empty() { Ok(spec) } else { Err(undefined) }
        });
        validated.map_err(|errors| {
            let name = task.metadata.name.clone().unwrap_or(stem.clone());
            (
                name,
                errors.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n"),
            )
        })
    };
    // A small manifest is judged in place: a trip to the blocking pool costs more than
    // its parse, and a controller starting over 100,000 of them makes one per task.
    let judged = if shared.parse_inline || parsed_bytes.len() <= INLINE_PARSE_BYTES {
        judge()
    } else {
        tokio::task::spawn_blocking(judge).await.map_err(|err| StoreError::Io {
            path: file.clone(),
            source: std::io::Error::other(err.to_string()),
        })?
    };
    let desired = match judged {
        Ok(spec) => {
            let spec = Box::new(spec);
            shared.memory(key, |m| m.validated = Some((parsed_bytes, spec.clone())));
            Desired::Valid(spec)
        }
        Err((name, message)) => {
            // A file saved in pieces may not parse, or may lack a field, for a moment.
            let fresh = modified
                .and_then(|m| SystemTime::from(shared.clock.now()).duration_since(m).ok())
                .is_some_and(|age| age < SETTLE_TIME);
            if fresh {
                return Ok(None);
            }
            Desired::Invalid { name, message }
        }
    };
    Ok(Some(DesiredRead {
        desired,
        file: Some(file),
        local_dir,
    }))
}
