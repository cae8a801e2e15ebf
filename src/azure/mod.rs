//! What the aci runtime and the blob store share of Azure: identity (which
//! `azure_identity` credential gets tokens, [`identity`]) and azure_core's HTTP over this
//! build's reqwest ([`http`]), and Key Vault secrets ([`keyvault`]) for the controller's
//! secret source. It sits below both, so that neither reaches into the other
//! for a credential.

pub mod http;
pub mod identity;
pub mod keyvault;

pub use identity::{CredentialError, CredentialKind, credential};
