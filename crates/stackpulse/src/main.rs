//! The `stackpulse` binary: parses the command line and runs it.
use std::process::ExitCode;

use stackpulse::cli::{Cli, Command};

#[tokio::main]
async fn main() -> ExitCode {
    stackpulse::auth::jwks_http::install_crypto_provider();
    let cli = Cli::parse_for_process();
    match cli.command {
        Command::Serve(args) => stackpulse::cli::serve(*args).await,
        Command::Tail(args) => stackpulse::cli::tail(args).await,
        Command::HashKey => stackpulse::cli::hash_key(),
        Command::Watch(args) => stackpulse::watch::watch(args).await,
        Command::Deploy(args) => stackpulse::watch::deploy(args).await,
        Command::Bench(args) => stackpulse::bench::main(args).await,
        Command::Doctor(args) => stackpulse::doctor::main(*args).await,
        Command::Lambda(args) => stackpulse::serverless::lambda::run(*args).await,
        Command::LambdaLocal(args) => stackpulse::serverless::local::run(*args).await,
    }
}
