#![forbid(unsafe_code)]

use std::io::IsTerminal;

use clap::Parser;
use dhcpmanager_operator::cli::{Cli, Command, lease, load_config};
use tracing_subscriber::EnvFilter;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    // Logs go to stderr so that stdout carries only the command's JSON or YAML output. The agent
    // logs what it does; the tools only what goes wrong (their stdout says the rest).
    let default_filter = match cli.command {
        Command::Agent(_) => "info,kube=warn",
        _ => "warn",
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_filter)),
        )
        .with_writer(std::io::stderr)
        // Colours only on a terminal: in a pod, kubectl logs would show the escape codes.
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    let result = match cli.command {
        Command::Agent(args) => match load_config(args.config.as_ref()) {
            Ok(config) => dhcpmanager_operator::agent::run(args, config)
                .await
                .map_err(Into::into),
            Err(error) => Err(error),
        },
        Command::Lease(args) => lease::run(args).await,
        Command::Crd => {
            print!("{}", dhcpmanager_crds::crds_yaml());
            Ok(())
        }
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("dhcpmanager-operator: {error}");
            std::process::ExitCode::FAILURE
        }
    }
}
