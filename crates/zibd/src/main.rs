fn main() -> std::process::ExitCode {
    zibd::cli::main()
}
