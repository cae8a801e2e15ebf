//! The published JSON Schema and the sample manifests stay true to the Rust types.
//!
//! - `manifests/containertask.schema.json` must be exactly what the types generate;
//! - every sample in `manifests/samples/` and `examples/` must parse and validate,
//!   except the `later-*` samples, which show what later versions run and must be
//!   refused today with "not supported yet" (and for no other reason).

use skiff::manifest::{Features, RuntimeKind, ValidationContext, json_schema, parse_manifest, validate};
use std::path::{Path, PathBuf};

const REGENERATE: &str = "cargo run -q --bin skiff -- schema > manifests/containertask.schema.json";

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

#[test]
fn published_schema_matches_the_types() {
    let path = repo().join("manifests/containertask.schema.json");
    let published = std::fs::read_to_string(&path)
        .unwrap_or_else(|err| panic!("cannot read {}: {err}\ncreate it with: {REGENERATE}", path.display()));
    let generated = json_schema();
    if published != generated {
        let first_difference = published
            .lines()
            .zip(generated.lines())
            .position(|(a, b)| a != b)
            .map(|i| i + 1)
            .unwrap_or_else(|| published.lines().count().min(generated.lines().count()) + 1);
        panic!(
            "manifests/containertask.schema.json is stale: it differs from \
             skiff::manifest::json_schema() from line {first_difference} on.\n\
             Regenerate it with:\n    {REGENERATE}"
        );
    }
    // The file is a JSON Schema, not just any text.
    let schema: serde_json::Value = serde_json::from_str(&published).expect("the schema is JSON");
    assert_eq!(schema["title"], "ContainerTask");
    assert_eq!(schema["additionalProperties"], false, "unknown fields must be refused");
}

/// Manifest files under `dir` (recursively), skipping statuses and dot-files.
fn manifests_under(dir: &Path) -> Vec<PathBuf> {
    let mut found: Vec<PathBuf> = walkdir::WalkDir::new(dir)
        .sort_by_file_name()
        .into_iter()
        .filter_entry(|e| e.depth() == 0 || !e.file_name().to_string_lossy().starts_with('.'))
        .map(|entry| entry.expect("walk the samples").into_path())
        .filter(|path| {
            let name = path.file_name().unwrap_or_default().to_string_lossy();
            path.is_file()
                && !name.ends_with(".status.json")
                && (name.ends_with(".yaml") || name.ends_with(".yml") || name.ends_with(".json"))
        })
        .collect();
    found.sort();
    found
}

#[test]
fn samples_and_examples_validate_and_later_ones_say_not_supported_yet() {
    // The host folder the docker thumbnail example mounts, allowed as its README says.
    let allowed = [std::path::PathBuf::from("/tmp/skiff-thumbnail")];
    let ctx = ValidationContext {
        default_runtime: RuntimeKind::Process,
        allow_host_paths: &allowed,
        features: Features::CURRENT,
        env_is_set: None,
    };
    let samples = manifests_under(&repo().join("manifests/samples"));
    let examples = manifests_under(&repo().join("examples"));
    assert!(
        samples.len() >= 5,
        "expected the sample manifests in manifests/samples, found {samples:?}"
    );
    // (A later-* sample is optional: per-task ACI placement, the last one, has landed.)
    assert!(!examples.is_empty(), "expected example manifests under examples/");

    let mut problems = Vec::new();
    for path in samples.iter().chain(&examples) {
        let file = path.strip_prefix(repo()).unwrap_or(path).display().to_string();
        let stem = path.file_stem().unwrap_or_default().to_string_lossy().into_owned();
        let later = stem.starts_with("later-");
        let bytes = std::fs::read(path).unwrap_or_else(|err| panic!("{file}: {err}"));
        // Even a later-* sample must parse: it may use only fields the format has.
        let task = match parse_manifest(&file, &bytes) {
            Ok(task) => task,
            Err(err) => {
                problems.push(format!("does not parse: {err}"));
                continue;
            }
        };
        match (validate(&file, &stem, &task, &ctx), later) {
            (Ok(_), false) => {}
            (Err(errors), false) => {
                for err in errors {
                    problems.push(format!("does not validate: {err}"));
                }
            }
            (Ok(_), true) => problems.push(format!(
                "{file}: a later-* sample validates today; it is no longer a later feature, rename it"
            )),
            (Err(errors), true) => {
                // Every refusal must be a later feature, so the sample becomes valid
                // as soon as those features land.
                for err in errors.iter().filter(|e| !e.to_string().contains("not supported yet")) {
                    problems.push(format!(
                        "later-* sample refused for another reason than \"not supported yet\": {err}"
                    ));
                }
            }
        }
    }
    assert!(
        problems.is_empty(),
        "sample manifests are out of date:\n{}",
        problems.join("\n")
    );
}
