//! Secrets a manifest names but never holds: `valueFrom` (the controller's environment, or
//! a Key Vault secret URL), `spec.imagePullSecrets` (a password from either, or a managed
//! identity on aci), and the ARM ids that identities and subnets are given by.

use super::context::ValidationContext;
use super::values::is_env_name;
use super::{EnvValue, PullAuth, PullSecret, SecretRef};
use crate::manifest::wire::{RuntimeKind, Spec, ValueFrom};

/// The DNS suffixes of Key Vault in Azure's clouds (public, China, US Government).
const VAULT_SUFFIXES: [&str; 3] = [".vault.azure.net", ".vault.azure.cn", ".vault.usgovcloudapi.net"];

/// `valueFrom` at `at`: exactly one of `env` (set in the controller's environment, when
/// validation can tell) and `keyVault` (a Key Vault secret URL).
pub(super) fn value_from(
    from: &ValueFrom,
    at: &str,
    ctx: &ValidationContext<'_>,
    fail: &mut impl FnMut(String),
) -> Option<EnvValue> {
    match (&from.env, &from.key_vault) {
        (Some(var), None) => {
            if !is_env_name(var) {
                fail(format!("{at}.env: {var:?} is not a valid variable name"));
            } else if let Some(is_set) = ctx.env_is_set
                && !is_set(var)
            {
                fail(format!(
                    "{at}.env: {var} is not set in the controller's environment; export it before starting skiff"
                ));
            }
            Some(EnvValue::FromEnv(var.clone()))
        }
        (None, Some(vault)) => match check_secret_url(&vault.secret_url) {
            Ok(()) => Some(EnvValue::External(SecretRef {
                url: vault.secret_url.trim().to_string(),
            })),
            Err(why) => {
                fail(format!("{at}.keyVault.secretUrl: {why}"));
                None
            }
        },
        (Some(_), Some(_)) => {
            fail(format!("{at}: has both env and keyVault; keep one"));
            None
        }
        (None, None) => {
            fail(format!(
                "{at}: names no source; add `env: VARIABLE` or `keyVault: {{secretUrl: https://VAULT.vault.azure.net/secrets/NAME}}`"
            ));
            None
        }
    }
}

/// A Key Vault secret URL: `https://VAULT.vault.azure.net/secrets/NAME[/VERSION]` (or
/// another cloud's vault suffix), or, for tests, the same path on a loopback `http` address.
pub fn check_secret_url(text: &str) -> Result<(), String> {
    const FIX: &str = "write https://VAULT.vault.azure.net/secrets/NAME or .../secrets/NAME/VERSION";
    let text = text.trim();
    let (scheme, rest) = text
        .split_once("://")
        .ok_or_else(|| format!("{text:?} is not a URL; {FIX}"))?;
    let (host, path) = rest.split_once('/').unwrap_or((rest, ""));
    if text.contains(['?', '#', '@']) || text.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(format!(
            "{text:?} is not a Key Vault secret URL (no query, fragment, user or spaces); {FIX}"
        ));
    }
    let host_name = host
        .rsplit_once(':')
        .map_or(host, |(name, _)| name)
        .to_ascii_lowercase();
    match scheme {
        "https" => {
            let vault = VAULT_SUFFIXES.iter().find_map(|suffix| host_name.strip_suffix(suffix));
            let good_vault = vault.is_some_and(|v| {
                (3..=24).contains(&v.len())
                    && v.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                    && !v.starts_with('-')
            });
            if !good_vault || host.contains(':') {
                return Err(format!(
                    "{text:?}: {host:?} is not a Key Vault (VAULT.vault.azure.net); {FIX}"
                ));
            }
        }
        "http" if is_loopback(&host_name) => {}
        "http" => {
            return Err(format!(
                "{text:?}: plain http is accepted only on loopback (127.0.0.1, for tests); {FIX}"
            ));
        }
        _ => return Err(format!("{text:?} is not an https URL; {FIX}")),
    }
    let parts: Vec<&str> = path.trim_end_matches('/').split('/').collect();
    let name_ok =
        |s: &str| !s.is_empty() && s.len() <= 127 && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-');
    let ok = match parts.as_slice() {
        ["secrets", name] => name_ok(name),
        ["secrets", name, version] => {
            name_ok(name) && !version.is_empty() && version.bytes().all(|b| b.is_ascii_alphanumeric())
        }
        _ => false,
    };
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{text:?} does not name a secret (/secrets/NAME[/VERSION]); {FIX}"
        ))
    }
}

fn is_loopback(host: &str) -> bool {
    host == "localhost" || host == "[::1]" || host.parse::<std::net::Ipv4Addr>().is_ok_and(|ip| ip.is_loopback())
}

/// Whether `id` is the ARM id of a resource of `provider_type` (e.g.
/// `Microsoft.ManagedIdentity/userAssignedIdentities`), compared without case, with a
/// name after each type segment: `/subscriptions/S/resourceGroups/G/providers/P/T/N[/T2/N2]`.
pub fn is_arm_id(id: &str, provider_type: &str) -> bool {
    let parts: Vec<&str> = id.split('/').collect();
    let types: Vec<&str> = provider_type.split('/').collect();
    // "", subscriptions, S, resourceGroups, G, providers, namespace, then (type, name) pairs.
    let pairs = types.len() - 1;
    if parts.len() != 7 + 2 * pairs || !parts[0].is_empty() {
        return false;
    }
    let eq = |a: &str, b: &str| a.eq_ignore_ascii_case(b);
    let named = |s: &str| !s.is_empty() && !s.contains(char::is_whitespace);
    eq(parts[1], "subscriptions")
        && named(parts[2])
        && eq(parts[3], "resourceGroups")
        && named(parts[4])
        && eq(parts[5], "providers")
        && eq(parts[6], types[0])
        && (0..pairs).all(|i| eq(parts[7 + 2 * i], types[1 + i]) && named(parts[8 + 2 * i]))
}

pub const IDENTITY_TYPE: &str = "Microsoft.ManagedIdentity/userAssignedIdentities";
pub const SUBNET_TYPE: &str = "Microsoft.Network/virtualNetworks/subnets";
const IDENTITY_EXAMPLE: &str =
    "/subscriptions/SUB/resourceGroups/RG/providers/Microsoft.ManagedIdentity/userAssignedIdentities/NAME";

/// An identity's ARM id, or the error naming `at` and the fix.
pub(super) fn check_identity_id(id: &str, at: &str, fail: &mut impl FnMut(String)) {
    if !is_arm_id(id, IDENTITY_TYPE) {
        fail(format!(
            "{at}: {id:?} is not a user-assigned identity's ARM id; write {IDENTITY_EXAMPLE} (az identity show --query id)"
        ));
    }
}

/// `spec.imagePullSecrets`: each a server with a username and `passwordFrom`, or (aci) an
/// identity, never both. The process runtime pulls nothing: a note says so.
pub(super) fn pull_secrets(
    spec: &Spec,
    runtime: RuntimeKind,
    ctx: &ValidationContext<'_>,
    notes: &mut Vec<String>,
    fail: &mut impl FnMut(String),
) -> Vec<PullSecret> {
    let mut secrets = Vec::new();
    if runtime == RuntimeKind::Process && !spec.image_pull_secrets.is_empty() {
        notes.push("the process runtime pulls no image and ignores imagePullSecrets".into());
    }
    let mut servers = std::collections::HashSet::new();
    for (i, entry) in spec.image_pull_secrets.iter().enumerate() {
        let at = format!("spec.imagePullSecrets[{i}]");
        let server = entry.server.trim();
        let good_server = !server.is_empty()
            && server.len() <= 253
            && server
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-.:_[]".contains(&b));
        if !good_server {
            fail(format!(
                "{at}.server: {:?} is not a registry host; write its name without scheme or path, e.g. myacr.azurecr.io",
                entry.server
            ));
        } else if !servers.insert(server.to_ascii_lowercase()) {
            fail(format!(
                "{at}.server: {server} has credentials twice; keep one entry per registry"
            ));
        }
        let auth = match (&entry.username, &entry.password_from, &entry.identity) {
            (_, Some(_), Some(_)) | (Some(_), _, Some(_)) => {
                fail(format!(
                    "{at}: has both a password (username, passwordFrom) and an identity; keep one: a username and passwordFrom, or identity (aci)"
                ));
                None
            }
            (None, None, None) => {
                fail(format!(
                    "{at}: names no credential; add `username` and `passwordFrom: {{env: VARIABLE}}`, or `identity: <ARM id>` (aci)"
                ));
                None
            }
            (None, Some(_), None) => {
                fail(format!(
                    "{at}.username: is missing; a password needs the user it belongs to"
                ));
                None
            }
            (Some(_), None, None) => {
                fail(format!(
                    "{at}.passwordFrom: is missing; add `passwordFrom: {{env: VARIABLE}}` or `{{keyVault: {{secretUrl: ...}}}}`"
                ));
                None
            }
            (Some(username), Some(from), None) => {
                if username.trim().is_empty() {
                    fail(format!("{at}.username: is empty"));
                }
                value_from(from, &format!("{at}.passwordFrom"), ctx, fail).map(|password| PullAuth::Password {
                    username: username.trim().to_string(),
                    password,
                })
            }
            (None, None, Some(identity)) => {
                if runtime == RuntimeKind::Docker {
                    fail(format!(
                        "{at}.identity: a managed identity pulls images on aci only; on docker give `username` and `passwordFrom`"
                    ));
                }
                check_identity_id(identity, &format!("{at}.identity"), fail);
                Some(PullAuth::Identity(identity.trim().to_string()))
            }
        };
        if let Some(auth) = auth {
            secrets.push(PullSecret {
                server: server.to_string(),
                auth,
            });
        }
    }
    secrets
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_urls_are_key_vault_secrets_or_loopback() {
        for good in [
            "https://myvault.vault.azure.net/secrets/db-password",
            "https://myvault.vault.azure.net/secrets/db-password/0123456789abcdef0123456789abcdef",
            "https://my-vault.vault.azure.cn/secrets/x",
            "http://127.0.0.1:8080/secrets/x",
            "http://localhost:1/secrets/x/v1",
        ] {
            assert_eq!(check_secret_url(good), Ok(()), "{good}");
        }
        for (bad, why) in [
            ("http://myvault.vault.azure.net/secrets/x", "loopback"),
            ("https://example.com/secrets/x", "is not a Key Vault"),
            ("https://myvault.vault.azure.net/keys/x", "does not name a secret"),
            ("https://myvault.vault.azure.net/secrets/", "does not name a secret"),
            ("https://myvault.vault.azure.net/secrets/x?api-version=7.4", "no query"),
            ("myvault/secrets/x", "not a URL"),
            ("ftp://127.0.0.1/secrets/x", "not an https URL"),
            ("http://10.0.0.1/secrets/x", "loopback"),
            (
                "https://myvault.vault.azure.net.evil.com/secrets/x",
                "is not a Key Vault",
            ),
        ] {
            let err = check_secret_url(bad).unwrap_err();
            assert!(err.contains(why), "{bad}: {err}");
        }
    }

    #[test]
    fn arm_ids_are_checked_by_type() {
        let id = "/subscriptions/00000000-0000-0000-0000-000000000001/resourceGroups/rg/providers/Microsoft.ManagedIdentity/userAssignedIdentities/pull";
        assert!(is_arm_id(id, IDENTITY_TYPE));
        assert!(is_arm_id(&id.to_ascii_lowercase(), IDENTITY_TYPE));
        assert!(!is_arm_id(id, SUBNET_TYPE));
        assert!(!is_arm_id("pull", IDENTITY_TYPE));
        assert!(!is_arm_id(&format!("{id}/x"), IDENTITY_TYPE));
        let subnet = "/subscriptions/s/resourceGroups/rg/providers/Microsoft.Network/virtualNetworks/vnet/subnets/aci";
        assert!(is_arm_id(subnet, SUBNET_TYPE));
        assert!(!is_arm_id(
            "/subscriptions/s/resourceGroups/rg/providers/Microsoft.Network/virtualNetworks/vnet",
            SUBNET_TYPE
        ));
    }
}
