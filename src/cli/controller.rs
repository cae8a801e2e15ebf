//! `skiff controller`: wires the store, the runtimes and the controller together, and
//! turns SIGTERM / Ctrl+C into a graceful stop.

use super::{ControllerArgs, UsageError, open_dir_store, state_dir, tokio_runtime};
use crate::controller::{Controller, ControllerConfig, Outcome};
use crate::manifest::RuntimeKind;
use crate::runtime::Runtime;
use crate::runtime::process::ProcessRuntime;
use std::os::unix::fs::DirBuilderExt;
use std::process::ExitCode;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

pub fn run(args: ControllerArgs) -> anyhow::Result<ExitCode> {
    init_logging(&args.log)?;
    let default_runtime = RuntimeKind::from(args.runtime);
    if default_runtime != RuntimeKind::Process {
        return Err(UsageError(format!(
            "--runtime {default_runtime} is not supported yet by this version of skiff; use --runtime process"
        ))
        .into());
    }
    for (flag, given) in [
        ("--listen", args.listen.is_some()),
        ("--callback-url", args.callback_url.is_some()),
        ("--docker-network", args.docker_network.is_some()),
    ] {
        if given {
            return Err(UsageError(format!(
                "{flag} is not supported yet by this version of skiff; remove it"
            ))
            .into());
        }
    }
    if args.max_running == Some(0) {
        return Err(UsageError("--max-running 0 would never run anything; give at least 1".into()).into());
    }
    for prefix in &args.allow_host_path {
        if !prefix.is_absolute() {
            return Err(UsageError(format!("--allow-host-path {}: give an absolute path", prefix.display())).into());
        }
    }
    let store = open_dir_store(&args.source)?;
    let state = state_dir(&args.source);
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&state)
        .map_err(|err| UsageError(format!("--state-dir {}: {err}", state.display())))?;
    let exe = std::env::current_exe()?;
    let process = ProcessRuntime::new(&state, exe)
        .map_err(|err| UsageError(format!("--state-dir {}: {err}", state.display())))?;
    let runtimes: Vec<Arc<dyn Runtime>> = vec![Arc::new(process)];
    let config = ControllerConfig {
        default_runtime,
        max_running: args.max_running,
        resync: args.resync,
        once: args.once,
        allow_host_paths: args.allow_host_path.clone(),
        ..ControllerConfig::default()
    };
    let controller = Controller::new(Arc::new(store), runtimes, config);

    let runtime = tokio_runtime()?;
    let outcome = runtime.block_on(async move {
        let shutdown = CancellationToken::new();
        let trigger = shutdown.clone();
        tokio::spawn(async move {
            wait_for_signal().await;
            tracing::info!("stopping: finishing the status writes in flight; containers keep running");
            trigger.cancel();
        });
        controller.run(shutdown).await
    })?;
    // Reaper tasks of finished supervisors may still be parked; do not wait for them.
    runtime.shutdown_background();
    Ok(match outcome {
        Outcome::AllSucceeded | Outcome::Shutdown => ExitCode::SUCCESS,
        Outcome::SomeFailed => ExitCode::from(1),
    })
}

async fn wait_for_signal() {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(term) => term,
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}

fn init_logging(filter: &str) -> anyhow::Result<()> {
    // Other crates speak only when they have something worth a warning.
    let filter = if filter.contains('=') || filter.contains(',') {
        filter.to_string()
    } else {
        format!("warn,skiff={filter}")
    };
    let filter = filter.as_str();
    let filter = tracing_subscriber::EnvFilter::try_new(filter)
        .map_err(|err| UsageError(format!("--log {filter}: {err}; write e.g. info or skiff=debug")))?;
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init();
    Ok(())
}
