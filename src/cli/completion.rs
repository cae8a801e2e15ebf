//! `skiff completion SHELL` and `skiff man`: shell completions (clap_complete) and the
//! man page (clap_mangen), both generated from the very definitions that parse the flags,
//! so they can never drift from them.

use super::Cli;
use clap::CommandFactory;
use std::io::Write;
use std::process::ExitCode;

pub fn completion(shell: clap_complete::Shell) -> anyhow::Result<ExitCode> {
    let mut command = Cli::command();
    let mut out = Vec::new();
    clap_complete::generate(shell, &mut command, "skiff", &mut out);
    std::io::stdout().write_all(&out)?;
    Ok(ExitCode::SUCCESS)
}

pub fn man() -> anyhow::Result<ExitCode> {
    let mut out = Vec::new();
    clap_mangen::Man::new(Cli::command()).render(&mut out)?;
    std::io::stdout().write_all(&out)?;
    Ok(ExitCode::SUCCESS)
}
