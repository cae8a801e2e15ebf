//! Azure identity: which `azure_identity` credential gets tokens (`--azure-credential`,
//! else the one the environment points at), built with its own HTTP going through this
//! build's reqwest. ARM tokens for the aci runtime and Storage tokens for the blob store
//! both come from here.

use azure_core::credentials::TokenCredential;
use std::sync::Arc;

/// Which `azure_identity` credential gets tokens (`--azure-credential`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CredentialKind {
    /// `ManagedIdentityCredential`: App Service / Functions (`IDENTITY_ENDPOINT` and
    /// `IDENTITY_HEADER`) or IMDS on a VM; `AZURE_CLIENT_ID` picks a user-assigned identity.
    Managed,
    /// `WorkloadIdentityCredential`: AKS workload identity (`AZURE_TENANT_ID`,
    /// `AZURE_CLIENT_ID`, `AZURE_FEDERATED_TOKEN_FILE`).
    Workload,
    /// `ClientSecretCredential`: a service principal (`AZURE_TENANT_ID`,
    /// `AZURE_CLIENT_ID`, `AZURE_CLIENT_SECRET`).
    Secret,
    /// `AzureCliCredential`: whoever `az login` signed in.
    Cli,
}

impl CredentialKind {
    pub fn as_str(self) -> &'static str {
        match self {
            CredentialKind::Managed => "managed",
            CredentialKind::Workload => "workload",
            CredentialKind::Secret => "secret",
            CredentialKind::Cli => "cli",
        }
    }

    /// The credential the environment points at, in DefaultAzureCredential's order (without
    /// its probing): workload identity, a service principal's secret, a managed identity's
    /// endpoint; else the Azure CLI.
    pub fn guess() -> CredentialKind {
        let set = |name: &str| std::env::var_os(name).is_some_and(|v| !v.is_empty());
        if set("AZURE_FEDERATED_TOKEN_FILE") {
            CredentialKind::Workload
        } else if set("AZURE_CLIENT_SECRET") {
            CredentialKind::Secret
        } else if set("IDENTITY_ENDPOINT") || set("MSI_ENDPOINT") {
            CredentialKind::Managed
        } else {
            CredentialKind::Cli
        }
    }
}

impl std::fmt::Display for CredentialKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for CredentialKind {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text {
            "managed" => Ok(CredentialKind::Managed),
            "workload" => Ok(CredentialKind::Workload),
            "secret" => Ok(CredentialKind::Secret),
            "cli" => Ok(CredentialKind::Cli),
            other => Err(format!(
                "{other:?} is not a credential; write managed, workload, secret or cli"
            )),
        }
    }
}

/// Why the chosen credential could not be built (a missing variable, a bad value): a
/// configuration mistake, said with the flag and where to read more.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct CredentialError(String);

/// Builds the chosen `azure_identity` credential, its HTTP going through `http`.
pub fn credential(kind: CredentialKind, http: &reqwest::Client) -> Result<Arc<dyn TokenCredential>, CredentialError> {
    use azure_core::http::{ClientOptions, Transport};
    use azure_identity::{
        AzureCliCredential, AzureCliCredentialOptions, ClientAssertionCredentialOptions, ClientSecretCredential,
        ClientSecretCredentialOptions, ManagedIdentityCredential, ManagedIdentityCredentialOptions, UserAssignedId,
        WorkloadIdentityCredential, WorkloadIdentityCredentialOptions,
    };
    let client_options = ClientOptions {
        transport: Some(Transport::new(Arc::new(IdentityTransport(http.clone())))),
        ..Default::default()
    };
    let env = |name: &str| std::env::var(name).ok().filter(|v| !v.trim().is_empty());
    let failed = |err: azure_core::Error| {
        CredentialError(format!(
            "--azure-credential {kind}: {err}; see the README's section on real Azure"
        ))
    };
    let credential: Arc<dyn TokenCredential> = match kind {
        CredentialKind::Managed => ManagedIdentityCredential::new(Some(ManagedIdentityCredentialOptions {
            user_assigned_id: env("AZURE_CLIENT_ID").map(UserAssignedId::ClientId),
            client_options,
        }))
        .map_err(failed)?,
        CredentialKind::Workload => WorkloadIdentityCredential::new(Some(WorkloadIdentityCredentialOptions {
            credential_options: ClientAssertionCredentialOptions { client_options },
            ..Default::default()
        }))
        .map_err(failed)?,
        CredentialKind::Secret => {
            let vars = ["AZURE_TENANT_ID", "AZURE_CLIENT_ID", "AZURE_CLIENT_SECRET"];
            let missing: Vec<&str> = vars.into_iter().filter(|v| env(v).is_none()).collect();
            let (Some(tenant), Some(client), Some(secret)) = (env(vars[0]), env(vars[1]), env(vars[2])) else {
                return Err(CredentialError(format!(
                    "--azure-credential secret needs {} in the environment",
                    missing.join(", ")
                )));
            };
            ClientSecretCredential::new(
                &tenant,
                client,
                azure_core::credentials::Secret::new(secret),
                Some(ClientSecretCredentialOptions { client_options }),
            )
            .map_err(failed)?
        }
        CredentialKind::Cli => AzureCliCredential::new(Some(AzureCliCredentialOptions {
            tenant_id: env("AZURE_TENANT_ID"),
            ..Default::default()
        }))
        .map_err(failed)?,
    };
    Ok(credential)
}

/// `azure_identity`'s HTTP over the given reqwest client, so that the build has one
/// reqwest (azure_core's own transport would bring another major version of it).
#[derive(Debug)]
struct IdentityTransport(reqwest::Client);

#[async_trait::async_trait]
impl azure_core::http::HttpClient for IdentityTransport {
    async fn execute_request(
        &self,
        request: &azure_core::http::Request,
    ) -> azure_core::Result<azure_core::http::AsyncRawResponse> {
        super::http::send(&self.0, request, "identity").await
    }
}
