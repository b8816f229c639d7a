//! What is generated from the clap definitions (src/cli.rs) rather than
//! written by hand: the shell completion scripts (`zbridge completions
//! SHELL`) and the man pages (`zbridge manpages DIR`, hidden: the Debian
//! package's, built by scripts/dist).

use crate::cli::Cli;
use anyhow::Context;
use clap::CommandFactory;
use clap_complete::Shell;
use std::io::Write;
use std::path::Path;
use zbridge::Error;

/// Print the completion script for `shell` on stdout.
pub fn completions(shell: Shell) -> Result<(), Error> {
    // Into memory first: clap_complete panics on a failed write (a closed
    // pipe), where this reports it.
    let mut script = Vec::new();
    clap_complete::generate(shell, &mut Cli::command(), "zbridge", &mut script);
    std::io::stdout()
        .write_all(&script)
        .context("cannot write the completion script to stdout")?;
    Ok(())
}

/// Write zbridge.1 and one page per visible subcommand (zbridge-run.1,
/// zbridge-bench-client.1, ...) into `dir`, creating it if missing.
pub fn manpages(dir: &Path) -> Result<(), Error> {
    std::fs::create_dir_all(dir).with_context(|| {
        format!(
            "cannot create {}: check the path and its permissions",
            dir.display()
        )
    })?;
    clap_mangen::generate_to(Cli::command(), dir)
        .with_context(|| format!("cannot write the man pages into {}", dir.display()))?;
    Ok(())
}
