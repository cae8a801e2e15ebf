//! Where a running controller's API answers, recorded in its state folder
//! (`<state>/api.json`): `skiff terminate` finds it there, and a controller restarted
//! without `--listen` takes the same port again, so that the callback URLs its running
//! containers were given still reach it.

use serde::{Deserialize, Serialize};
use std::net::TcpListener;
use std::path::{Path, PathBuf};

const FILE: &str = "api.json";

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Endpoint {
    /// `http://127.0.0.1:PORT`, as the controller serves it.
    pub url: String,
    /// The controller's process id, to tell a stale record from a live controller.
    pub pid: u32,
    /// The file holding the bearer token the management routes require, if any (the
    /// token itself is never written here).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_file: Option<PathBuf>,
}

pub fn record(state_dir: &Path, endpoint: &Endpoint) -> std::io::Result<()> {
    let bytes = serde_json::to_vec_pretty(endpoint).map_err(std::io::Error::other)?;
    crate::fsutil::write_atomic(&state_dir.join(FILE), &bytes)
}

pub fn read(state_dir: &Path) -> Option<Endpoint> {
    let bytes = std::fs::read(state_dir.join(FILE)).ok()?;
    serde_json::from_slice(&bytes).ok()
}

/// Without `--listen`: the loopback port the last controller of this state folder used,
/// when it is free, else any free one.
pub fn bind_default(state_dir: &Path) -> std::io::Result<TcpListener> {
    let previous = read(state_dir)
        .and_then(|e| e.url.strip_prefix("http://127.0.0.1:")?.parse::<u16>().ok())
        .filter(|port| *port != 0);
    if let Some(port) = previous
        && let Ok(listener) = TcpListener::bind(("127.0.0.1", port))
    {
        return Ok(listener);
    }
    TcpListener::bind("127.0.0.1:0")
}
