//! `bench python`: the Python package (`python/`) against a raw pyzmq
//! DEALER through the same bridge. The pair and its echo services are
//! started here, as for `bench client --local-pair`; the measuring is
//! bench/python_client.py's, run by the given interpreter (one that has the
//! package and pyzmq installed: scripts/test leaves one in target/venv).

use crate::{BridgeProcess, LoopbackPair};
use anyhow::Context as _;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

const SCRIPT: &str = include_str!("../../../../bench/python_client.py");

pub fn python(
    interpreter: &Path,
    seconds: f64,
    rounds: usize,
    in_flight: usize,
) -> anyhow::Result<()> {
    let exe = std::env::current_exe()?;
    let pair = LoopbackPair::new(Duration::from_millis(100), Duration::from_millis(300))?;
    let _active = BridgeProcess::spawn(&exe, &pair.flags("active"))?;
    let _passive = BridgeProcess::spawn(&exe, &pair.flags("passive"))?;
    println!(
        "zbridge bench python: {} (bench/python_client.py), {in_flight} in flight, {rounds} rounds of {seconds} s per contender",
        interpreter.display()
    );
    let status = Command::new(interpreter)
        .arg("-c")
        .arg(SCRIPT)
        .arg(format!("--endpoints={}", pair.endpoints().join(",")))
        .arg(format!(
            "--heartbeats={}",
            pair.heartbeat_endpoints().join(",")
        ))
        .arg(format!("--seconds={seconds}"))
        .arg(format!("--rounds={rounds}"))
        .arg(format!("--in-flight={in_flight}"))
        .status()
        .with_context(|| format!("run {}", interpreter.display()))?;
    anyhow::ensure!(
        status.success(),
        "bench/python_client.py failed ({status}): is the zbridge package installed for {}? (scripts/test installs it in target/venv)",
        interpreter.display()
    );
    Ok(())
}
