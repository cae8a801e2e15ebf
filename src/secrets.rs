//! Where secrets kept outside the controller come from: the [`SecretSource`] the
//! controller asks, just before a create, for each `valueFrom` that is not in its own
//! environment (today a Key Vault reference). The controller knows only the trait; what
//! answers it is chosen by the command line ([`KeyVaultSecrets`], over [`crate::azure`]).
//! A value lives in memory for the attempt's create only and is never written anywhere.

use crate::manifest::SecretRef;
use async_trait::async_trait;

/// Why a secret could not be had.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    /// Refused or absent: the attempt fails (`SecretUnavailable`), naming the secret's URL.
    #[error("{0}")]
    Unavailable(String),
    /// Worth retrying with backoff (invariant 4: never counted against `retries`).
    #[error("{0}")]
    Transient(String),
}

#[async_trait]
pub trait SecretSource: Send + Sync {
    /// The secret's value. Errors name the reference, never a value.
    async fn resolve(&self, reference: &SecretRef) -> Result<String, SecretError>;
}

/// A controller given no secret source: every reference is unavailable.
pub struct NoSecretSource;

#[async_trait]
impl SecretSource for NoSecretSource {
    async fn resolve(&self, reference: &SecretRef) -> Result<String, SecretError> {
        Err(SecretError::Unavailable(format!(
            "{}: this controller reads no external secrets",
            reference.url
        )))
    }
}

/// Key Vault references, read with the controller's Azure credential.
pub struct KeyVaultSecrets(pub crate::azure::keyvault::KeyVault);

#[async_trait]
impl SecretSource for KeyVaultSecrets {
    async fn resolve(&self, reference: &SecretRef) -> Result<String, SecretError> {
        use crate::azure::keyvault::KeyVaultError;
        self.0.get(&reference.url).await.map_err(|err| match err {
            KeyVaultError::Unavailable(message) => SecretError::Unavailable(message),
            KeyVaultError::Transient(message) => SecretError::Transient(message),
        })
    }
}
