//! The reference implementation's launcher: the `pipeline` binary of `services/`, built as part of
//! this crate so that `cargo test --test cucumber` always has a fresh build of it. The runner finds
//! it at run time beside its own binary (`harness::paths::reference_sut_binary`) and starts it
//! through the SUT adapter protocol (`fixtures/contracts/adapter.md`) like any other
//! implementation's adapter (`QA_SUT_COMMAND`). This file is the only place in `steps/` that
//! knows the reference services.

fn main() -> std::process::ExitCode {
    services::cli::main()
}
