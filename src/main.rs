use clap::Parser;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    match mailroom::cli::Cli::parse().run().await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("mailroom: {err:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
