fn main() -> std::process::ExitCode {
    // The supervisor starts once per container: it skips the command-line machinery.
    if let Some(args) = skiff::runtime::supervisor::args_from_argv() {
        return std::process::ExitCode::from(skiff::runtime::supervisor::supervise(args) as u8);
    }
    if std::env::args_os()
        .nth(1)
        .is_some_and(|a| a == skiff::runtime::supervisor_server::SERVER_ARG)
    {
        return std::process::ExitCode::from(skiff::runtime::supervisor_server::serve() as u8);
    }
    skiff::cli::main()
}
