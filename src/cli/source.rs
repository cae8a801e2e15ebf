//! Opening the store that `--dir` or `--blob` names, or saying why not.

use super::{SourceArgs, UsageError};
use crate::store::Store;
use crate::store::blob::location::BlobLocation;
use crate::store::blob::{BlobConfig, BlobStore};
use crate::store::dir::DirStore;
use std::sync::Arc;

/// The store, and the blob store itself when it is one (for what only it has).
pub(super) struct Source {
    pub store: Arc<dyn Store>,
    pub blob: Option<Arc<BlobStore>>,
}

pub(super) fn open_store(source: &SourceArgs) -> anyhow::Result<Arc<dyn Store>> {
    Ok(open_source(source)?.store)
}

pub(super) fn open_source(source: &SourceArgs) -> anyhow::Result<Source> {
    match (&source.dir, &source.blob) {
        (Some(_), Some(_)) => Err(UsageError(
            "--dir and --blob (or SKIFF_DIR and SKIFF_BLOB) name two stores; give only one of them".into(),
        )
        .into()),
        (None, None) => Err(UsageError("give --dir DIR or --blob URL (or set SKIFF_DIR or SKIFF_BLOB)".into()).into()),
        (Some(dir), None) => {
            let store = DirStore::new(dir).map_err(|err| {
                UsageError(format!(
                    "--dir {}: {err}; create the folder or fix the path",
                    dir.display()
                ))
            })?;
            Ok(Source {
                store: Arc::new(store),
                blob: None,
            })
        }
        (None, Some(url)) => {
            let blob = Arc::new(open_blob(source, url)?);
            Ok(Source {
                store: blob.clone(),
                blob: Some(blob),
            })
        }
    }
}

fn open_blob(source: &SourceArgs, url: &str) -> anyhow::Result<BlobStore> {
    let location = BlobLocation::parse(url).map_err(|err| UsageError(err.to_string()))?;
    let auth = location
        .auth(&|name| std::env::var(name).ok())
        .map_err(|err| UsageError(err.to_string()))?;
    let credential = match auth {
        crate::store::blob::location::Auth::Token => {
            let kind = source
                .azure_credential
                .unwrap_or_else(crate::azure::CredentialKind::guess);
            let credential =
                crate::azure::credential(kind, &reqwest::Client::new()).map_err(|err| UsageError(err.to_string()))?;
            Some(credential)
        }
        _ => None,
    };
    BlobStore::new(BlobConfig {
        location,
        auth,
        credential,
        poll: source.blob_poll,
    })
    .map_err(|err| UsageError(err.to_string()).into())
}
