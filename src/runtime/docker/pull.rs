//! Images: an absent one is pulled once however many `ensure`s need it (the pull runs in
//! a task of its own and outlives a cancelled `ensure`), within a time limit; a pull that
//! failed is remembered a while, so that an image that cannot be had fails the attempt
//! ([`Reason::ImagePullFailed`]) rather than being pulled again and again.

use super::auth::scrub;
use super::errors::{engine_message, status_of, transient};
use crate::runtime::RuntimeError;
use crate::status::Reason;
use bollard::Docker;
use bollard::auth::DockerCredentials;
use bollard::errors::Error as EngineError;
use bollard::query_parameters::CreateImageOptions;
use futures_util::StreamExt;
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// How long a failed pull is remembered: an `ensure` that stopped waiting for it (its
/// reconcile timed out) learns the outcome rather than starting the same pull again.
const FAILED_PULL_MEMORY: Duration = Duration::from_secs(60);

enum Pull {
    Running(watch::Receiver<Option<PullResult>>),
    Failed { at: Instant, error: PullError },
}

type PullResult = Result<(), PullError>;

#[derive(Clone)]
struct PullError {
    /// The image cannot be had (as opposed to: the engine went away meanwhile).
    permanent: bool,
    message: String,
}

impl PullError {
    fn into_runtime_error(self) -> RuntimeError {
        if self.permanent {
            RuntimeError::Permanent {
                reason: Reason::ImagePullFailed,
                message: self.message,
            }
        } else {
            RuntimeError::Transient(self.message)
        }
    }
}

/// The runtime's pulls: one task per image reference, however many `ensure`s wait for it.
pub(super) struct Pulls {
    /// Pulls in flight, and pulls that failed lately, by image reference.
    running: std::sync::Mutex<HashMap<String, Pull>>,
    /// How long one pull may take.
    pub(super) timeout_ms: AtomicU64,
}

impl Pulls {
    pub(super) fn new(timeout: Duration) -> Self {
        Pulls {
            running: std::sync::Mutex::new(HashMap::new()),
            timeout_ms: AtomicU64::new(timeout.as_millis() as u64),
        }
    }

    /// Makes sure `image` is present, pulling it if not. The pull runs in a task of its
    /// own, shared by every `ensure` that needs the image (a fan-out of a hundred pulls
    /// once), and it goes on when the `ensure` waiting for it is cancelled (a reconcile
    /// that timed out): the next `ensure` joins it, or learns how it failed.
    pub(super) async fn ensure_image(
        self: &Arc<Self>,
        docker: &Docker,
        image: &str,
        credentials: Option<DockerCredentials>,
    ) -> Result<(), RuntimeError> {
        match docker.inspect_image(image).await {
            Ok(_) => return Ok(()),
            Err(err) if status_of(&err) == Some(404) => {}
            Err(err) => return Err(transient(&format!("inspect the image {image}"), err)),
        }
        let reference = with_default_tag(image);
        let mut outcome = {
            let mut pulls = self.running.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            match pulls.get(&reference) {
                Some(Pull::Failed { at, error }) if at.elapsed() < FAILED_PULL_MEMORY => {
                    return Err(error.clone().into_runtime_error());
                }
                // (A pull whose task ended without a word, in a panic, is started again.)
                Some(Pull::Running(outcome)) if outcome.has_changed().is_ok() => outcome.clone(),
                _ => {
                    let (tx, rx) = watch::channel(None);
                    pulls.insert(reference.clone(), Pull::Running(rx.clone()));
                    tokio::spawn(self.clone().pull(docker.clone(), reference.clone(), credentials, tx));
                    rx
                }
            }
        };
        let result = match outcome.wait_for(Option::is_some).await {
            Ok(done) => done.clone().unwrap_or(Ok(())),
            // The pulling task ended without a word: the runtime is shutting down.
            Err(_) => Err(PullError {
                permanent: false,
                message: format!("docker: the pull of {reference} was abandoned"),
            }),
        };
        result.map_err(PullError::into_runtime_error)?;
        // A pull that "succeeds" without producing the image must not loop forever.
        match docker.inspect_image(image).await {
            Ok(_) => Ok(()),
            Err(err) if status_of(&err) == Some(404) => Err(RuntimeError::Permanent {
                reason: Reason::ImagePullFailed,
                message: format!("docker: the image {image} is still absent after pulling {reference}"),
            }),
            Err(err) => Err(transient(&format!("inspect the image {image}"), err)),
        }
    }

    /// Pulls `reference` within the pull time limit, and tells the waiters how it went.
    async fn pull(
        self: Arc<Self>,
        docker: Docker,
        reference: String,
        credentials: Option<DockerCredentials>,
        tx: watch::Sender<Option<PullResult>>,
    ) {
        tracing::info!(image = %reference, "pulling the image");
        let options = CreateImageOptions {
            from_image: Some(reference.clone()),
            ..Default::default()
        };
        let pulling = async {
            // The registry's credentials go as X-Registry-Auth, on this request only.
            let mut progress = docker.create_image(Some(options), None, credentials.clone());
            while let Some(item) = progress.next().await {
                match item {
                    // Progress lines; a failure comes as an error item (bollard turns the
                    // stream's errorDetail into one) or as an error answer.
                    Ok(_) => {}
                    Err(
                        err @ (EngineError::DockerResponseServerError { .. } | EngineError::DockerStreamError { .. }),
                    ) => {
                        // The registry's words (e.g. "unauthorized: ..."), never the password.
                        let words = scrub(&engine_message(&err), credentials.as_ref());
                        return Err(PullError {
                            permanent: true,
                            message: format!("docker: cannot pull the image {reference}: {words}"),
                        });
                    }
                    // The engine went away mid-pull: not the image's fault.
                    Err(err) => {
                        return Err(PullError {
                            permanent: false,
                            message: format!(
                                "docker: cannot pull the image {reference}: {}",
                                scrub(&err.to_string(), credentials.as_ref())
                            ),
                        });
                    }
                }
            }
            Ok(())
        };
        let limit = Duration::from_millis(self.timeout_ms.load(Ordering::Relaxed));
        let result = match tokio::time::timeout(limit, pulling).await {
            Ok(result) => result,
            Err(_) => Err(PullError {
                permanent: true,
                message: format!(
                    "docker: the image {reference} could not be pulled within {}",
                    humantime::format_duration(limit)
                ),
            }),
        };
        match &result {
            Ok(()) => tracing::info!(image = %reference, "pulled the image"),
            Err(err) => tracing::warn!(image = %reference, "{}", err.message),
        }
        {
            let mut pulls = self.running.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            match &result {
                // Remembered for a while, for an `ensure` that stopped waiting.
                Err(error) if error.permanent => {
                    let failed = Pull::Failed {
                        at: Instant::now(),
                        error: error.clone(),
                    };
                    pulls.insert(reference.clone(), failed);
                }
                _ => {
                    pulls.remove(&reference);
                }
            }
            // Failures of other images are forgotten in time, not only when retried.
            pulls.retain(|_, pull| !matches!(pull, Pull::Failed { at, .. } if at.elapsed() >= FAILED_PULL_MEMORY));
        }
        let _ = tx.send(Some(result));
    }
}

/// `name` → `name:latest`: a pull of a bare name would fetch every tag of the repository.
fn with_default_tag(image: &str) -> String {
    if image.contains('@') {
        return image.to_string();
    }
    let last = image.rsplit('/').next().unwrap_or(image);
    if last.contains(':') {
        image.to_string()
    } else {
        format!("{image}:latest")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bare_image_names_get_the_latest_tag() {
        assert_eq!(with_default_tag("busybox"), "busybox:latest");
        assert_eq!(with_default_tag("skiff-busybox:test"), "skiff-busybox:test");
        assert_eq!(with_default_tag("localhost:5000/a/b"), "localhost:5000/a/b:latest");
        assert_eq!(with_default_tag("localhost:5000/a/b:1"), "localhost:5000/a/b:1");
        assert_eq!(with_default_tag("a/b@sha256:00"), "a/b@sha256:00");
    }
}
