//! What `--blob URL` names, and how to authenticate to it, following the Azure CLI's
//! conventions (DESIGN.md §9): a SAS in the URL's query; else
//! `AZURE_STORAGE_CONNECTION_STRING` or `AZURE_STORAGE_KEY` (a shared key for the URL's
//! account); else an Entra token.

use super::sharedkey::SharedKey;
use std::collections::HashMap;

/// A blob container and an optional prefix inside it.
#[derive(Clone, PartialEq, Eq)]
pub struct BlobLocation {
    /// `https://account.blob.core.windows.net` or, path-style, `http://127.0.0.1:10000/devstoreaccount1`.
    pub endpoint: String,
    pub account: String,
    pub container: String,
    /// Without leading or trailing `/`; empty for the whole container.
    pub prefix: String,
    /// The SAS query (without `?`), when the URL carries one.
    pub sas: Option<String>,
}

impl std::fmt::Debug for BlobLocation {
    // The SAS is a secret: never printed.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.display())
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum LocationError {
    #[error(
        "--blob {0}: {1}; write https://ACCOUNT.blob.core.windows.net/CONTAINER[/PREFIX] or, for Azurite, http://127.0.0.1:10000/devstoreaccount1/CONTAINER"
    )]
    BadUrl(String, String),
    #[error("{0}")]
    Credential(String),
}

/// How requests are authorised.
#[derive(Clone)]
pub enum Auth {
    /// The SAS travels in every URL's query.
    Sas,
    SharedKey(SharedKey),
    /// An Entra token from `azure_identity` (https only).
    Token,
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.describe())
    }
}

impl Auth {
    pub fn describe(&self) -> &'static str {
        match self {
            Auth::Sas => "a SAS in the URL",
            Auth::SharedKey(_) => "a shared key",
            Auth::Token => "an Entra token",
        }
    }
}

/// Hosts addressed path-style (`http://host:port/ACCOUNT/CONTAINER`): Azurite and other
/// emulators, reached by IP address or `localhost`.
fn path_style(host: &str) -> bool {
    host == "localhost" || host.parse::<std::net::IpAddr>().is_ok() || host.starts_with('[')
}

impl BlobLocation {
    pub fn parse(text: &str) -> Result<Self, LocationError> {
        let shown = redact(text);
        let bad = |why: &str| LocationError::BadUrl(shown.clone(), why.to_string());
        let url = azure_core::http::Url::parse(text.trim()).map_err(|err| bad(&err.to_string()))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(bad("the scheme must be https (or http for Azurite)"));
        }
        let host = url.host_str().ok_or_else(|| bad("there is no host"))?.to_string();
        let mut segments: Vec<String> = url
            .path_segments()
            .map(|s| s.filter(|p| !p.is_empty()).map(decode).collect())
            .unwrap_or_default();
        let origin = match url.port() {
            Some(port) => format!("{}://{host}:{port}", url.scheme()),
            None => format!("{}://{host}", url.scheme()),
        };
        let (account, endpoint) = if path_style(&host) {
            if segments.is_empty() {
                return Err(bad("an emulator's URL names the account first"));
            }
            let account = segments.remove(0);
            let endpoint = format!("{origin}/{account}");
            (account, endpoint)
        } else {
            let account = host.split('.').next().unwrap_or_default().to_string();
            (account, origin)
        };
        if segments.is_empty() {
            return Err(bad("the URL names no container"));
        }
        let container = segments.remove(0);
        let valid_container = (3..=63).contains(&container.len())
            && container
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
        if !valid_container {
            return Err(bad(&format!(
                "{container:?} is not a container name (3-63 lowercase letters, digits and hyphens)"
            )));
        }
        let sas = url.query().filter(|q| !q.is_empty()).map(str::to_string);
        if let Some(query) = &sas
            && !query.split('&').any(|pair| pair.starts_with("sig="))
        {
            return Err(bad(
                "the query is not a SAS (it has no sig=); drop it, or paste the whole SAS",
            ));
        }
        Ok(BlobLocation {
            endpoint,
            account,
            container,
            prefix: segments.join("/"),
            sas,
        })
    }

    /// The URL without its SAS, for messages and logs.
    pub fn display(&self) -> String {
        let mut out = format!("{}/{}", self.endpoint, self.container);
        if !self.prefix.is_empty() {
            out.push('/');
            out.push_str(&self.prefix);
        }
        out
    }

    /// The container's URL (with the SAS).
    pub fn container_url(&self) -> String {
        self.with_sas(format!("{}/{}", self.endpoint, self.container))
    }

    /// The full name of a blob under the prefix.
    pub fn blob_name(&self, rel: &str) -> String {
        if self.prefix.is_empty() {
            rel.to_string()
        } else {
            format!("{}/{rel}", self.prefix)
        }
    }

    /// The prefix to list, with its trailing `/`.
    pub fn list_prefix(&self) -> Option<String> {
        (!self.prefix.is_empty()).then(|| format!("{}/", self.prefix))
    }

    /// A blob's URL (with the SAS); `rel` is relative to the prefix. Each path segment is
    /// percent-encoded, and the `/` between them kept, as the service names blobs.
    pub fn blob_url(&self, rel: &str) -> String {
        let encoded: Vec<String> = self
            .blob_name(rel)
            .split('/')
            .map(|s| urlencoding::encode(s).into_owned())
            .collect();
        self.with_sas(format!("{}/{}/{}", self.endpoint, self.container, encoded.join("/")))
    }

    fn with_sas(&self, url: String) -> String {
        match &self.sas {
            Some(sas) => format!("{url}?{sas}"),
            None => url,
        }
    }

    /// Chooses the credential: a SAS in the URL; else a connection string or key from
    /// `env`; else an Entra token (https only).
    pub fn auth(&self, env: &dyn Fn(&str) -> Option<String>) -> Result<Auth, LocationError> {
        if self.sas.is_some() {
            return Ok(Auth::Sas);
        }
        let env = |name: &str| env(name).filter(|v| !v.trim().is_empty());
        if let Some(text) = env("AZURE_STORAGE_CONNECTION_STRING") {
            let fields = connection_string(&text);
            if fields.contains_key("SharedAccessSignature") {
                return Err(LocationError::Credential(
                    "AZURE_STORAGE_CONNECTION_STRING holds a SAS; put the SAS in the --blob URL's query instead".into(),
                ));
            }
            let (Some(name), Some(key)) = (fields.get("AccountName"), fields.get("AccountKey")) else {
                return Err(LocationError::Credential(
                    "AZURE_STORAGE_CONNECTION_STRING has no AccountName and AccountKey; copy it again from `az storage account show-connection-string`".into(),
                ));
            };
            if *name != self.account {
                return Err(LocationError::Credential(format!(
                    "AZURE_STORAGE_CONNECTION_STRING is for account {name}, but --blob names account {}; use the matching connection string",
                    self.account
                )));
            }
            let key = SharedKey::new(name, key)
                .map_err(|err| LocationError::Credential(format!("AZURE_STORAGE_CONNECTION_STRING: {err}")))?;
            return Ok(Auth::SharedKey(key));
        }
        if let Some(key) = env("AZURE_STORAGE_KEY") {
            let key = SharedKey::new(&self.account, &key)
                .map_err(|err| LocationError::Credential(format!("AZURE_STORAGE_KEY: {err}")))?;
            return Ok(Auth::SharedKey(key));
        }
        if !self.endpoint.starts_with("https://") {
            return Err(LocationError::Credential(format!(
                "--blob {}: Entra tokens need https; for Azurite set AZURE_STORAGE_CONNECTION_STRING or AZURE_STORAGE_KEY, or put a SAS in the URL",
                self.display()
            )));
        }
        Ok(Auth::Token)
    }
}

fn decode(segment: &str) -> String {
    urlencoding::decode(segment)
        .map(|s| s.into_owned())
        .unwrap_or_else(|_| segment.to_string())
}

/// `Name=value;Name=value` (values may contain `=`, as base64 keys do).
pub fn connection_string(text: &str) -> HashMap<String, String> {
    text.split(';')
        .filter_map(|pair| {
            let (name, value) = pair.split_once('=')?;
            Some((name.trim().to_string(), value.trim().to_string()))
        })
        .collect()
}

/// The URL with any SAS signature hidden, for error messages.
fn redact(text: &str) -> String {
    match text.split_once('?') {
        Some((base, _)) => format!("{base}?<SAS hidden>"),
        None => text.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";

    #[test]
    fn azure_urls_with_and_without_prefix() {
        let loc = BlobLocation::parse("https://acct.blob.core.windows.net/tasks").unwrap();
        assert_eq!(loc.account, "acct");
        assert_eq!(loc.container, "tasks");
        assert_eq!(loc.prefix, "");
        assert_eq!(
            loc.blob_url("jobs/a b.yaml"),
            "https://acct.blob.core.windows.net/tasks/jobs/a%20b.yaml"
        );
        let loc = BlobLocation::parse("https://acct.blob.core.windows.net/tasks/team/a/").unwrap();
        assert_eq!(loc.prefix, "team/a");
        assert_eq!(loc.blob_name("x.yaml"), "team/a/x.yaml");
        assert_eq!(loc.list_prefix().as_deref(), Some("team/a/"));
    }

    #[test]
    fn azurite_urls_are_path_style() {
        let loc = BlobLocation::parse("http://127.0.0.1:10000/devstoreaccount1/tasks/p").unwrap();
        assert_eq!(loc.endpoint, "http://127.0.0.1:10000/devstoreaccount1");
        assert_eq!(loc.account, "devstoreaccount1");
        assert_eq!((loc.container.as_str(), loc.prefix.as_str()), ("tasks", "p"));
        assert_eq!(loc.container_url(), "http://127.0.0.1:10000/devstoreaccount1/tasks");
    }

    #[test]
    fn bad_urls_say_how_to_write_one() {
        for bad in [
            "tasks",
            "ftp://a.blob.core.windows.net/c",
            "https://a.blob.core.windows.net/",
            "https://a.blob.core.windows.net/Bad_Name",
            "http://127.0.0.1:10000/",
            "https://a.blob.core.windows.net/tasks?x=1",
        ] {
            let err = BlobLocation::parse(bad).unwrap_err().to_string();
            assert!(
                err.contains("https://ACCOUNT.blob.core.windows.net/CONTAINER"),
                "{bad}: {err}"
            );
        }
    }

    #[test]
    fn a_sas_is_used_and_never_shown() {
        let loc = BlobLocation::parse("https://a.blob.core.windows.net/tasks?sv=2024&sig=SECRET").unwrap();
        assert!(matches!(loc.auth(&|_| None), Ok(Auth::Sas)));
        assert!(loc.blob_url("x.yaml").ends_with("x.yaml?sv=2024&sig=SECRET"));
        assert!(!format!("{loc:?}").contains("SECRET"));
        assert!(!loc.display().contains("SECRET"));
        let err = BlobLocation::parse("https://a.blob.core.windows.net/Bad?sig=SECRET").unwrap_err();
        assert!(!err.to_string().contains("SECRET"));
    }

    #[test]
    fn credentials_follow_the_azure_cli_order() {
        let loc = BlobLocation::parse("http://127.0.0.1:10000/devstoreaccount1/tasks").unwrap();
        let conn = format!(
            "DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;AccountKey={KEY};BlobEndpoint=http://127.0.0.1:10000/devstoreaccount1;"
        );
        let env = |vars: Vec<(&'static str, String)>| {
            move |name: &str| vars.iter().find(|(n, _)| *n == name).map(|(_, v)| v.clone())
        };
        let auth = loc
            .auth(&env(vec![("AZURE_STORAGE_CONNECTION_STRING", conn.clone())]))
            .unwrap();
        assert!(matches!(auth, Auth::SharedKey(ref k) if k.account() == "devstoreaccount1"));
        let auth = loc.auth(&env(vec![("AZURE_STORAGE_KEY", KEY.to_string())])).unwrap();
        assert!(matches!(auth, Auth::SharedKey(_)));
        // http and no key: tokens cannot be used, and the error says what to set.
        let err = loc.auth(&env(vec![])).unwrap_err().to_string();
        assert!(err.contains("AZURE_STORAGE_CONNECTION_STRING"), "{err}");
        // A connection string for another account is refused, by name.
        let other = conn.replace("AccountName=devstoreaccount1", "AccountName=other");
        let err = loc
            .auth(&env(vec![("AZURE_STORAGE_CONNECTION_STRING", other)]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("account other") && !err.contains(KEY), "{err}");
        let err = loc
            .auth(&env(vec![("AZURE_STORAGE_KEY", "%%%".into())]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("AZURE_STORAGE_KEY"), "{err}");
        let https = BlobLocation::parse("https://a.blob.core.windows.net/tasks").unwrap();
        assert!(matches!(https.auth(&env(vec![])), Ok(Auth::Token)));
    }
}
