//! `zbridge`: parse the command line, set up logging, dispatch, exit code.
//! Exit codes: 0 success, 1 runtime failure, 2 bad config or usage.
#![forbid(unsafe_code)]

use clap::Parser;
use std::process::ExitCode;
use zbridge::{run, Error};
use zbridge_lab::{bench, demo};

mod cli;
mod manual;
mod tools;

fn main() -> ExitCode {
    let cli = cli::Cli::parse();
    let result = match cli.command {
        cli::Command::Run {
            mode,
            config,
            overrides,
        } => run::run(mode, config.as_deref(), &overrides),
        cli::Command::CheckConfig { file, overrides } => run::check_config(&file, &overrides),
        cli::Command::Request {
            endpoint,
            config,
            target,
            timeout,
            payload,
        } => tools::request(&endpoint, config.as_deref(), &target, timeout, &payload),
        cli::Command::Subscribe {
            config,
            endpoints,
            stream,
            topic,
            count,
            seconds,
            json,
        } => tools::subscribe(
            config.as_deref(),
            &endpoints,
            stream.as_deref(),
            &topic,
            tools::Until { count, seconds },
            json,
        ),
        cli::Command::Status {
            endpoint,
            config,
            timeout,
        } => tools::status(endpoint.as_deref(), config.as_deref(), timeout),
        cli::Command::Keygen { path } => zbridge::curve::keygen(&path).map_err(Error::from),
        cli::Command::Bench { what } => bench::run(what).map_err(Error::from),
        cli::Command::Demo { seconds } => demo::run(seconds).map_err(Error::from),
        cli::Command::Completions { shell } => manual::completions(shell),
        cli::Command::Manpages { dir } => manual::manpages(&dir),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("zbridge: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}
