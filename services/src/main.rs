//! `pipeline`: runs one component of the reference audio pipeline per process (see `services::cli`).

fn main() -> std::process::ExitCode {
    services::cli::main()
}
