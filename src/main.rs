//! The `mailroom` binary: the allocator, the runtime, and the command line.
// The only unsafe code of the service: the allocator's settings (the library forbids it).
mod allocator;

use clap::Parser;

/// mimalloc rather than glibc's malloc: see Cargo.toml.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    allocator::tune();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("mailroom: cannot start the async runtime: {err}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(mailroom::cli::Cli::parse().run()) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("mailroom: {err:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
