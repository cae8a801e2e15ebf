//! The blob store's own tests (the Azurite ones are in tests/blob.rs): which blob names
//! are tasks, and what each answer of the service means to the controller.

use super::*;

#[test]
fn blob_names_that_cannot_be_task_keys_are_skipped() {
    let key = |rel: &str| match classify(rel) {
        Some(Role::Manifest(key)) | Some(Role::Status(key)) => Some(key.to_string()),
        None => None,
    };
    assert_eq!(key("jobs/a.yaml").as_deref(), Some("jobs/a"));
    assert_eq!(key("jobs/a.status.json").as_deref(), Some("jobs/a"));
    for bad in [
        "../x.yaml",
        "a/../../x.yaml",
        "/abs.yaml",
        "a//b.yaml",
        "a\\b.yaml",
        "a/./b.status.json",
        "a\0b.yaml",
        ".skiff/x.yaml",
    ] {
        assert_eq!(key(bad), None, "{bad:?}");
    }
}

#[test]
fn answers_map_to_what_the_controller_does_with_them() {
    use azure_core::error::{Error, ErrorKind};
    let http = |status: u16, code: &str| {
        Error::new(
            ErrorKind::HttpResponse {
                status: StatusCode::from(status),
                error_code: Some(code.to_string()),
                raw_response: None,
            },
            "answer",
        )
    };
    let kind = |err: &Error| match store_error("loc", "a.status.json", err) {
        StoreError::Conflict { .. } => "conflict",
        StoreError::Unavailable { .. } => "unavailable",
        StoreError::Refused { .. } => "refused",
        _ => "other",
    };
    assert_eq!(kind(&http(412, "ConditionNotMet")), "conflict");
    assert_eq!(kind(&http(409, "BlobAlreadyExists")), "conflict");
    assert_eq!(kind(&http(409, "LeaseAlreadyPresent")), "conflict");
    assert_eq!(kind(&http(503, "ServerBusy")), "unavailable");
    assert_eq!(kind(&http(500, "InternalError")), "unavailable");
    assert_eq!(kind(&http(429, "")), "unavailable");
    assert_eq!(
        kind(&Error::with_message(ErrorKind::Connection, "cannot connect")),
        "unavailable"
    );
    assert_eq!(kind(&http(403, "AuthenticationFailed")), "refused");
    let text = store_error("loc", "list", &http(404, "ContainerNotFound")).to_string();
    assert!(
        text.contains("ContainerNotFound") && text.contains("az storage container create"),
        "{text}"
    );
}

#[test]
fn names_map_to_tasks_as_in_the_directory_store() {
    let key = |rel: &str| match classify(rel) {
        Some(Role::Manifest(k)) => format!("m:{k}"),
        Some(Role::Status(k)) => format!("s:{k}"),
        None => "-".into(),
    };
    assert_eq!(key("jobs/a.yaml"), "m:jobs/a");
    assert_eq!(key("a.json"), "m:a");
    assert_eq!(key("jobs/a.status.json"), "s:jobs/a");
    for ignored in [
        ".skiff/leases/a.lease",
        ".skiff/secret",
        "a/.b.yaml",
        "a.txt",
        "a//b.yaml",
        ".yaml",
    ] {
        assert_eq!(key(ignored), "-", "{ignored}");
    }
}
