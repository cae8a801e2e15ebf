//! How the aci runtime is configured: where it makes groups and how it reaches ARM
//! ([`AciConfig`], [`AciCredential`]), why it could not be set up ([`AciError`]), and the
//! constants of ARM and ACI that the other files share.

use super::quota::CreateQuota;
use crate::azure::CredentialKind;
use azure_core::credentials::TokenCredential;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// The ARM api-version of every call.
pub const API_VERSION: &str = "2026-05-01";
/// Public Azure's Resource Manager.
pub const DEFAULT_ARM_ENDPOINT: &str = "https://management.azure.com";
/// The token scope for Resource Manager in public Azure. Sovereign clouds have their own
/// ([`AciConfig::token_scope`]).
pub const DEFAULT_TOKEN_SCOPE: &str = "https://management.azure.com/.default";
/// ACI's default create quota: `100/5m,300/1h`.
pub const DEFAULT_CREATE_QUOTA: &str = "100/5m,300/1h";
/// Resources of a container whose spec names none.
pub const DEFAULT_CPU: f64 = 1.0;
pub const DEFAULT_MEMORY_GB: f64 = 1.5;
/// How long a group may take to start when its task names no `spec.aci.startTimeout`.
pub const DEFAULT_START_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(15 * 60);
/// The tag holding when a group must have started by (RFC 3339), set at its create.
pub const TAG_START_BY: &str = "skiff.start-by";
/// The tag naming the controller that made a group (the id in `<state>/aci-owner`).
pub const TAG_OWNER: &str = "skiff.owner";
/// Where ARM tokens come from.
#[derive(Debug, Clone)]
pub enum AciCredential {
    /// One of `azure_identity`'s credentials, configured from the environment.
    Azure(CredentialKind),
    /// Any credential, e.g. one an embedding program already has, or a test's.
    Custom(Arc<dyn TokenCredential>),
}

impl AciCredential {
    pub(super) fn describe(&self) -> String {
        match self {
            AciCredential::Azure(kind) => format!("the {kind} credential"),
            AciCredential::Custom(_) => "the given credential".to_string(),
        }
    }
}

/// How the runtime reaches ARM and where it makes groups. Build it with
/// [`AciConfig::new`] and change the fields that need changing.
#[derive(Debug, Clone)]
pub struct AciConfig {
    pub subscription_id: String,
    pub resource_group: String,
    /// Where groups are made, unless a task names its own (`ContainerSpec::location`).
    pub location: String,
    /// Resource Manager's base URL (`--arm-endpoint`): public Azure by default; a
    /// sovereign cloud's, or a simulator's (plain `http://` is accepted for loopback only).
    pub arm_endpoint: String,
    pub credential: AciCredential,
    /// The scope tokens are asked for: Resource Manager's audience plus `/.default`.
    pub token_scope: String,
    pub create_quota: CreateQuota,
    /// The longest a call waits, inside the runtime, for a create token or for a
    /// `Retry-After` to pass; beyond, it is a Transient error and the controller retries.
    pub max_wait: Duration,
    /// How long one `ensure` follows a group's provisioning before handing back to the
    /// controller (which calls it again while the group is still provisioning). It holds
    /// one of the controller's reconcile workers meanwhile, so it stays well below the
    /// reconcile timeout.
    pub provision_wait: Duration,
    /// How long `delete` waits for a deleted group to be gone.
    pub delete_wait: Duration,
    /// The pause between two GETs of a group being provisioned or deleted: from `poll_min`,
    /// doubling up to `poll_max`. Gentle on the subscription's read quota.
    pub poll_min: Duration,
    pub poll_max: Duration,
    /// One HTTP exchange with ARM.
    pub request_timeout: Duration,
}

impl AciConfig {
    /// Public Azure, the default quota and waits.
    pub fn new(
        subscription_id: impl Into<String>,
        resource_group: impl Into<String>,
        location: impl Into<String>,
        credential: AciCredential,
    ) -> Self {
        AciConfig {
            subscription_id: subscription_id.into(),
            resource_group: resource_group.into(),
            location: location.into(),
            arm_endpoint: DEFAULT_ARM_ENDPOINT.to_string(),
            credential,
            token_scope: DEFAULT_TOKEN_SCOPE.to_string(),
            create_quota: CreateQuota::default(),
            max_wait: Duration::from_secs(30),
            provision_wait: Duration::from_secs(30),
            delete_wait: Duration::from_secs(30),
            poll_min: Duration::from_millis(500),
            poll_max: Duration::from_secs(5),
            request_timeout: Duration::from_secs(60),
        }
    }
}

/// Why the runtime could not be set up: a configuration mistake, to report as such.
#[derive(Debug, thiserror::Error)]
pub enum AciError {
    #[error("{0}")]
    Config(String),
    #[error("{0}")]
    Credential(String),
    #[error("the state folder {path}: {source}")]
    StateDir { path: PathBuf, source: std::io::Error },
}
