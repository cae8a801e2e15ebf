//! The optional config file: YAML whose keys are the controller's long flag names
//! (`max-running: 8`). Its values become defaults, so flags and environment win.

use super::Cli;
use clap::{CommandFactory, FromArgMatches};
use std::path::PathBuf;

/// A config file is a few lines of flags; anything this large is the wrong file.
const CONFIG_LIMIT: u64 = 1024 * 1024;

pub fn parse_with_config_file() -> Result<Cli, String> {
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    let mut command = Cli::command();
    if let Some(path) = config_path(&args) {
        // Through the bounded reader: a FIFO or a device named by mistake must not hang.
        let bytes = crate::fsutil::read_regular(&path, CONFIG_LIMIT)
            .map_err(|err| format!("--config {}: {err}; fix the path or unset SKIFF_CONFIG", path.display()))?;
        let text = String::from_utf8(bytes)
            .map_err(|_| format!("--config {}: is not UTF-8 text; save it as UTF-8", path.display()))?;
        let settings: std::collections::BTreeMap<String, yaml_serde::Value> =
            yaml_serde::from_str(&text).map_err(|err| {
                format!(
                    "{}: {err}; the config file is a YAML map of flag names to values",
                    path.display()
                )
            })?;
        let controller = command
            .find_subcommand("controller")
            .cloned()
            .ok_or_else(|| "internal: no controller subcommand".to_string())?;
        let mut controller = controller;
        for (key, value) in settings {
            let id = key.replace('-', "_");
            if !controller.get_arguments().any(|a| a.get_id() == id.as_str()) {
                return Err(format!(
                    "{}: unknown setting `{key}`; use the controller's long flag names, e.g. max-running",
                    path.display()
                ));
            }
            let values: Vec<String> = match value {
                yaml_serde::Value::Sequence(items) => items.iter().map(scalar).collect::<Result<_, _>>(),
                other => scalar(&other).map(|v| vec![v]),
            }
            .map_err(|what| format!("{}: setting `{key}`: {what}", path.display()))?;
            controller = controller.mut_arg(id, |arg| arg.default_values(values));
        }
        command = command.mut_subcommand("controller", |_| controller);
    }
    let matches = command.try_get_matches_from(args).map_err(|err| {
        // --help and --version are not errors.
        if matches!(
            err.kind(),
            clap::error::ErrorKind::DisplayHelp | clap::error::ErrorKind::DisplayVersion
        ) {
            let _ = err.print();
            std::process::exit(0);
        }
        err.render()
            .to_string()
            .trim_start_matches("error: ")
            .trim_end()
            .to_string()
    })?;
    Cli::from_arg_matches(&matches).map_err(|err| err.to_string())
}

fn config_path(args: &[std::ffi::OsString]) -> Option<PathBuf> {
    let mut iter = args.iter().skip(1);
    while let Some(arg) = iter.next() {
        let text = arg.to_string_lossy();
        if text == "--config" {
            return iter.next().map(PathBuf::from);
        }
        if let Some(value) = text.strip_prefix("--config=") {
            return Some(PathBuf::from(value));
        }
        if text == "--" {
            break;
        }
    }
    std::env::var_os("SKIFF_CONFIG").map(PathBuf::from)
}

fn scalar(value: &yaml_serde::Value) -> Result<String, String> {
    match value {
        yaml_serde::Value::String(s) => Ok(s.clone()),
        yaml_serde::Value::Number(n) => Ok(n.to_string()),
        yaml_serde::Value::Bool(b) => Ok(b.to_string()),
        _ => Err("expected a string, number or boolean".into()),
    }
}
