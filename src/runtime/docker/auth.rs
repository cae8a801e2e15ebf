//! Registry credentials for pulls: the task's own (`spec.imagePullSecrets`, passwords
//! resolved by the controller), else the `--docker-config` file's (a
//! `~/.docker/config.json`-style `auths` map). They go to the engine as `X-Registry-Auth`
//! (bollard's [`DockerCredentials`]) on the pull of an image of that registry, and nowhere
//! else: never a label, a log line or a status (pull errors are scrubbed of the password).

use crate::runtime::{RegistryAuth, RegistryCredential};
use base64::Engine;
use bollard::auth::DockerCredentials;
use std::collections::HashMap;
use std::path::Path;

/// Docker Hub, however it is spelled.
const DOCKER_HUB: &str = "docker.io";

/// The registry host of an image reference, as the engine reads it: the first path
/// component when it has a `.` or `:` or is `localhost`, else Docker Hub.
pub(crate) fn registry_of(image: &str) -> String {
    match image.split_once('/') {
        Some((first, _)) if first.contains(['.', ':']) || first == "localhost" => normalize(first),
        _ => DOCKER_HUB.to_string(),
    }
}

/// A server as written in a config file or a manifest (`https://index.docker.io/v1/`,
/// `myacr.azurecr.io`) as a bare, lower-case host, Docker Hub's aliases made one.
fn normalize(server: &str) -> String {
    let server = server.trim();
    let server = server.split_once("://").map_or(server, |(_, rest)| rest);
    let host = server.split('/').next().unwrap_or(server).to_ascii_lowercase();
    match host.as_str() {
        "index.docker.io" | "registry-1.docker.io" | "registry.hub.docker.com" => DOCKER_HUB.to_string(),
        _ => host,
    }
}

/// The `auths` of a `--docker-config` file, by normalized server.
#[derive(Default, Clone)]
pub struct DockerConfig {
    auths: HashMap<String, (String, String)>,
}

impl std::fmt::Debug for DockerConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DockerConfig")
            .field("servers", &self.auths.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl DockerConfig {
    /// Reads a `config.json`: `{"auths": {SERVER: {"auth": base64("user:password")} |
    /// {"username", "password"}}}`. Entries with neither (a credential helper's) are
    /// skipped. The error names the file and the problem, never a value.
    pub fn load(path: &Path) -> Result<DockerConfig, String> {
        let bytes = crate::fsutil::read_regular(path, 1024 * 1024)
            .map_err(|err| format!("--docker-config {}: {err}", path.display()))?;
        Self::parse(&bytes).map_err(|why| format!("--docker-config {}: {why}", path.display()))
    }

    pub fn parse(bytes: &[u8]) -> Result<DockerConfig, String> {
        let value: serde_json::Value =
            serde_json::from_slice(bytes).map_err(|err| format!("not JSON ({err}); write {{\"auths\": {{...}}}}"))?;
        let mut auths = HashMap::new();
        let Some(entries) = value.get("auths").and_then(|a| a.as_object()) else {
            return Err(
                "has no \"auths\" object; write {\"auths\": {\"SERVER\": {\"auth\": \"base64(user:password)\"}}}"
                    .into(),
            );
        };
        for (server, entry) in entries {
            let text = |k: &str| entry.get(k).and_then(|v| v.as_str()).filter(|v| !v.is_empty());
            let pair = if let Some(auth) = text("auth") {
                let decoded = base64::engine::general_purpose::STANDARD
                    .decode(auth.trim())
                    .ok()
                    .and_then(|d| String::from_utf8(d).ok())
                    .ok_or_else(|| format!("auths.{server}.auth is not base64 of user:password"))?;
                let (user, password) = decoded
                    .split_once(':')
                    .ok_or_else(|| format!("auths.{server}.auth is not base64 of user:password"))?;
                (user.to_string(), password.to_string())
            } else if let (Some(user), Some(password)) = (text("username"), text("password")) {
                (user.to_string(), password.to_string())
            } else {
                continue;
            };
            auths.insert(normalize(server), pair);
        }
        Ok(DockerConfig { auths })
    }

    pub fn servers(&self) -> usize {
        self.auths.len()
    }
}

/// The credentials for pulling `image`: the task's for its registry, else the config
/// file's. An identity (aci's) is no docker credential.
pub(crate) fn credentials_for(
    image: &str,
    task: &[RegistryCredential],
    config: Option<&DockerConfig>,
) -> Option<DockerCredentials> {
    let registry = registry_of(image);
    let (username, password) = task
        .iter()
        .filter(|c| normalize(&c.server) == registry)
        .find_map(|c| match &c.auth {
            RegistryAuth::Password { username, password } => Some((username.clone(), password.clone())),
            RegistryAuth::Identity(_) => None,
        })
        .or_else(|| config.and_then(|config| config.auths.get(&registry).cloned()))?;
    Some(DockerCredentials {
        username: Some(username),
        password: Some(password),
        serveraddress: Some(if registry == DOCKER_HUB {
            "https://index.docker.io/v1/".to_string()
        } else {
            registry
        }),
        ..Default::default()
    })
}

/// `message` without the password: an engine's or a registry's words should never echo
/// it, and this makes sure.
pub(crate) fn scrub(message: &str, credentials: Option<&DockerCredentials>) -> String {
    match credentials.and_then(|c| c.password.as_deref()).filter(|p| p.len() >= 3) {
        Some(password) => message.replace(password, "<hidden>"),
        None => message.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn password(server: &str, user: &str, pass: &str) -> RegistryCredential {
        RegistryCredential {
            server: server.into(),
            auth: RegistryAuth::Password {
                username: user.into(),
                password: pass.into(),
            },
        }
    }

    #[test]
    fn the_registry_of_an_image_is_what_the_engine_pulls_from() {
        assert_eq!(registry_of("busybox"), "docker.io");
        assert_eq!(registry_of("library/busybox:1"), "docker.io");
        assert_eq!(registry_of("myacr.azurecr.io/team/app:1"), "myacr.azurecr.io");
        assert_eq!(registry_of("localhost:5000/app"), "localhost:5000");
        assert_eq!(registry_of("localhost/app"), "localhost");
        assert_eq!(normalize("https://index.docker.io/v1/"), "docker.io");
        assert_eq!(normalize("MyAcr.azurecr.io"), "myacr.azurecr.io");
    }

    #[test]
    fn the_tasks_credentials_come_first_then_the_config_files() {
        let config = DockerConfig::parse(
            br#"{"auths": {
                "https://index.docker.io/v1/": {"auth": "aHViOmh1YnBhc3M="},
                "myacr.azurecr.io": {"username": "cfg", "password": "cfgpass"},
                "helper.example": {}
            }}"#,
        )
        .unwrap();
        assert_eq!(config.servers(), 2);
        let task = [password("myacr.azurecr.io", "acr", "s3cret")];
        let picked = credentials_for("myacr.azurecr.io/app:1", &task, Some(&config)).unwrap();
        assert_eq!(
            (
                picked.username.as_deref(),
                picked.password.as_deref(),
                picked.serveraddress.as_deref()
            ),
            (Some("acr"), Some("s3cret"), Some("myacr.azurecr.io"))
        );
        let picked = credentials_for("myacr.azurecr.io/app:1", &[], Some(&config)).unwrap();
        assert_eq!(picked.username.as_deref(), Some("cfg"));
        let hub = credentials_for("busybox", &task, Some(&config)).unwrap();
        assert_eq!(
            (
                hub.username.as_deref(),
                hub.password.as_deref(),
                hub.serveraddress.as_deref()
            ),
            (Some("hub"), Some("hubpass"), Some("https://index.docker.io/v1/"))
        );
        assert!(credentials_for("other.io/app", &task, Some(&config)).is_none());
        let identity = [RegistryCredential {
            server: "myacr.azurecr.io".into(),
            auth: RegistryAuth::Identity("/subscriptions/s/x".into()),
        }];
        assert!(credentials_for("myacr.azurecr.io/app", &identity, None).is_none());
        assert!(!format!("{config:?}{task:?}").contains("pass") || !format!("{task:?}").contains("s3cret"));
        assert!(!format!("{task:?}").contains("s3cret"), "Debug hides the password");
    }

    #[test]
    fn bad_config_files_say_what_is_wrong_without_values() {
        let err = DockerConfig::parse(b"{}").err().unwrap();
        assert!(err.contains("auths"), "{err}");
        let err = DockerConfig::parse(br#"{"auths": {"r.io": {"auth": "bm9jb2xvbg=="}}}"#)
            .err()
            .unwrap();
        assert!(err.contains("r.io") && !err.contains("nocolon"), "{err}");
    }

    #[test]
    fn pull_errors_lose_the_password() {
        let creds = DockerCredentials {
            password: Some("s3cret".into()),
            ..Default::default()
        };
        assert_eq!(scrub("denied for s3cret", Some(&creds)), "denied for <hidden>");
    }

    /// What reaches the engine: bollard sends the credentials as `X-Registry-Auth`,
    /// base64url of their JSON, on `POST /images/create`. A fake engine on a unix socket
    /// records the header (no registry can be reached here for a real private pull).
    #[tokio::test]
    async fn the_pull_carries_x_registry_auth_with_the_tasks_credentials() {
        use futures_util::StreamExt;
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("engine.sock");
        let listener = tokio::net::UnixListener::bind(&socket).unwrap();
        let server = tokio::spawn(async move {
            let (mut conn, _) = listener.accept().await.unwrap();
            let mut request = Vec::new();
            let mut buf = [0u8; 4096];
            while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                let n = conn.read(&mut buf).await.unwrap();
                if n == 0 {
                    break;
                }
                request.extend_from_slice(&buf[..n]);
            }
            let body = br#"{"message":"unauthorized: authentication required"}"#;
            let answer = format!(
                "HTTP/1.1 401 Unauthorized\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
                body.len()
            );
            conn.write_all(answer.as_bytes()).await.unwrap();
            conn.write_all(body).await.unwrap();
            String::from_utf8_lossy(&request).to_string()
        });
        let docker =
            bollard::Docker::connect_with_socket(socket.to_str().unwrap(), 5, bollard::API_DEFAULT_VERSION).unwrap();
        let task = [password("myacr.azurecr.io", "acr", "s3cret")];
        let creds = credentials_for("myacr.azurecr.io/app:1", &task, None);
        let options = bollard::query_parameters::CreateImageOptions {
            from_image: Some("myacr.azurecr.io/app:1".into()),
            ..Default::default()
        };
        let mut stream = docker.create_image(Some(options), None, creds.clone());
        let first = stream.next().await.expect("an answer");
        let err = first.expect_err("a 401 is an error");
        let said = scrub(&err.to_string(), creds.as_ref());
        assert!(said.contains("unauthorized") && !said.contains("s3cret"), "{said}");
        let request = server.await.unwrap();
        let header = request
            .lines()
            .find_map(|line| {
                let (name, value) = line.split_once(':')?;
                name.eq_ignore_ascii_case("x-registry-auth")
                    .then(|| value.trim().to_string())
            })
            .expect("X-Registry-Auth is sent");
        let json = base64::engine::general_purpose::URL_SAFE
            .decode(&header)
            .or_else(|_| base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(&header))
            .expect("base64url");
        let auth: serde_json::Value = serde_json::from_slice(&json).unwrap();
        assert_eq!(auth["username"], "acr");
        assert_eq!(auth["password"], "s3cret");
        assert_eq!(auth["serveraddress"], "myacr.azurecr.io");
    }
}
