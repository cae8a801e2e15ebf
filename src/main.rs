fn main() -> std::process::ExitCode {
    skiff::cli::main()
}
