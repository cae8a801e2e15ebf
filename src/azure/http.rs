//! azure_core's HTTP over this crate's reqwest 0.12 (rustls), for `azure_identity` and
//! `azure_storage_blob` alike: azure_core's own transport would bring a second major
//! version of reqwest into the build. Errors never carry the URL, which may hold a SAS.

use azure_core::error::{Error, ErrorKind};
use azure_core::http::headers::{HeaderName, HeaderValue, Headers};
use azure_core::http::{AsyncRawResponse, Body, Method, Request};
use std::collections::HashMap;

/// Sends `request` with `client`; `what` names the caller in errors ("blob", "identity").
pub(crate) async fn send(
    client: &reqwest::Client,
    request: &Request,
    what: &str,
) -> azure_core::Result<AsyncRawResponse> {
    let method = match request.method() {
        Method::Get => reqwest::Method::GET,
        Method::Post => reqwest::Method::POST,
        Method::Put => reqwest::Method::PUT,
        Method::Delete => reqwest::Method::DELETE,
        Method::Patch => reqwest::Method::PATCH,
        Method::Head => reqwest::Method::HEAD,
        other => {
            return Err(Error::with_message(
                ErrorKind::Other,
                format!("the {what} transport cannot send {other:?}"),
            ));
        }
    };
    let mut outgoing = client.request(method, request.url().as_str());
    for (name, value) in request.headers().iter() {
        outgoing = outgoing.header(name.as_str(), value.as_str());
    }
    outgoing = match request.body() {
        Body::Bytes(bytes) => outgoing.body(bytes.to_vec()),
        // Statuses, manifests, lease calls and token forms are small; nothing here streams.
        #[allow(unreachable_patterns)]
        _ => {
            return Err(Error::with_message(
                ErrorKind::Other,
                format!("the {what} transport does not send streamed bodies"),
            ));
        }
    };
    // reqwest's error text carries the URL, and so a SAS: keep only its kind.
    let describe = |err: &reqwest::Error| {
        if err.is_timeout() {
            format!("the {what} request timed out")
        } else if err.is_connect() {
            format!("cannot connect for the {what} request")
        } else {
            format!("the {what} request failed")
        }
    };
    let response = outgoing.send().await.map_err(|err| {
        let kind = if err.is_connect() {
            ErrorKind::Connection
        } else {
            ErrorKind::Io
        };
        Error::with_message(kind, describe(&err))
    })?;
    let status = response.status().as_u16();
    let headers: HashMap<HeaderName, HeaderValue> = response
        .headers()
        .iter()
        .filter_map(|(name, value)| {
            let value = value.to_str().ok()?;
            Some((
                HeaderName::from(name.as_str().to_string()),
                HeaderValue::from(value.to_string()),
            ))
        })
        .collect();
    let body = response
        .bytes()
        .await
        .map_err(|err| Error::with_message(ErrorKind::Io, format!("reading the response: {}", describe(&err))))?;
    let stream: azure_core::http::response::PinnedStream =
        Box::pin(futures_util::stream::once(async move { Ok(body) }));
    Ok(AsyncRawResponse::new(status.into(), Headers::from(headers), stream))
}
