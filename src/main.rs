fn main() -> std::process::ExitCode {
    grantbridge::cli::main()
}
