//! The reference pipeline binary, built as part of this crate so that `cargo test --test cucumber`
//! always runs against a fresh build of `services` (`CARGO_BIN_EXE_sut-pipeline`).

fn main() -> std::process::ExitCode {
    services::cli::main()
}
