//! What the aci runtime and the blob store share of Azure: identity (which
//! `azure_identity` credential gets tokens, [`identity`]) and azure_core's HTTP over this
//! build's reqwest ([`http`]). It sits below both, so that neither reaches into the other
//! for a credential.

pub mod http;
pub mod identity;

pub use identity::{CredentialError, CredentialKind, credential};
