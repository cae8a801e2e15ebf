//! `skiff validate FILE...`: every error of every file, exit 1 if any.

use super::{ValidateArgs, printable};
use crate::manifest::{Features, RuntimeKind, ValidationContext, parse_manifest, validate};
use std::process::ExitCode;

pub fn run(args: &ValidateArgs) -> ExitCode {
    let ctx = ValidationContext {
        default_runtime: RuntimeKind::from(args.runtime),
        allow_host_paths: &args.allow_host_path,
        features: Features::CURRENT,
        env_is_set: None,
    };
    let mut failed = false;
    for path in &args.files {
        let file = path.display().to_string();
        let mut notes = Vec::new();
        let errors = match read(path) {
            Err(message) => vec![format!("{file}: {message}")],
            Ok(bytes) => {
                let stem = path
                    .file_stem()
                    .map(|s| s.to_string_lossy().into_owned())
                    .unwrap_or_default();
                match parse_manifest(&file, &bytes) {
                    Err(err) => vec![err.to_string()],
                    Ok(task) => match validate(&file, &stem, &task, &ctx) {
                        Ok(spec) => {
                            notes = spec.notes;
                            Vec::new()
                        }
                        Err(errors) => errors.iter().map(ToString::to_string).collect(),
                    },
                }
            }
        };
        if errors.is_empty() {
            let file = printable(&file);
            println!("{file}: ok");
            // Valid, but not quite as written (a value capped, a field ignored): say so.
            for note in notes {
                println!("{file}: note: {}", printable(&note));
            }
        } else {
            failed = true;
            for error in errors {
                println!("{}", printable(&error));
            }
        }
    }
    if failed { ExitCode::from(1) } else { ExitCode::SUCCESS }
}

fn read(path: &std::path::Path) -> Result<Vec<u8>, String> {
    let limit = crate::manifest::MAX_MANIFEST_BYTES as u64;
    crate::fsutil::read_regular(path, limit).map_err(|err| match err {
        crate::fsutil::ReadError::TooLarge { len, limit } => {
            format!("the file is {len} bytes; a manifest may be at most {limit} bytes (1 MiB)")
        }
        crate::fsutil::ReadError::Io(err) => format!("cannot read the file: {err}"),
        err => format!("the file {err}; a manifest must be a regular file"),
    })
}
