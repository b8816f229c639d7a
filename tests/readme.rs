//! The README's shell blocks, run as written: each in bash, from the
//! repository root, with the binary just built first on `PATH` (the tour's
//! own `cargo build` line skipped: the suite built it). They use the
//! default ports (5600-5630), as a newcomer would.

use crate::support::*;
use std::io::Read;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The blocks use the default ports, so they take turns: run side by side
/// (the suite's threads), one block's bridge found the other's heartbeat
/// port taken and exited.
fn default_ports() -> std::sync::MutexGuard<'static, ()> {
    static PORTS: Mutex<()> = Mutex::new(());
    PORTS.lock().unwrap_or_else(|e| e.into_inner())
}

/// The shell block that follows `heading` in README.md.
fn block_after(heading: &str) -> String {
    let readme = std::fs::read_to_string(root().join("README.md")).unwrap();
    let from = readme.find(heading).expect("the heading");
    let rest = &readme[from..];
    let start = rest.find("```sh\n").expect("a sh block") + "```sh\n".len();
    let end = rest[start..].find("```").expect("the block's end");
    rest[start..start + end].to_string()
}

/// What a block printed: stdout (each command echoed before it runs, as
/// `>>> command`) and stderr.
struct Ran {
    stdout: String,
    stderr: String,
}

impl Ran {
    /// What `command` (the start of its line) printed, up to the next one.
    fn said(&self, command: &str) -> String {
        let text = &self.stdout;
        let from = text
            .find(&format!(">>> {command}"))
            .unwrap_or_else(|| panic!("`{command}` did not run:\n{text}"));
        let rest = &text[from..];
        let end = rest[4..].find(">>> ").map_or(rest.len(), |i| i + 4);
        rest[..end].to_string()
    }
}

/// Run `block` in bash as its own process group, each command echoed first
/// and followed by `pause`, until `until(stdout, whether bash has ended)`
/// holds (within `timeout`); then kill the group, whatever happened:
/// nothing the block started outlives the test.
fn run_block(
    block: &str,
    pause: &str,
    until: impl Fn(&str, bool) -> bool,
    timeout: Duration,
) -> Ran {
    let script: String = block
        .lines()
        .filter(|l| !l.starts_with("cargo build"))
        .map(|l| format!("echo '>>> {}'\n{l}\n{pause}\n", l.replace('\'', "")))
        .collect();
    let bin = exe().parent().unwrap().display().to_string();
    let path = format!("{bin}:{}", std::env::var("PATH").unwrap_or_default());
    let mut child = Command::new("setsid")
        .args(["bash", "-c", &script])
        .current_dir(root())
        .env("PATH", path)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let group = child.id();
    let collect = |mut from: Box<dyn Read + Send>| {
        let text = Arc::new(Mutex::new(String::new()));
        let into = Arc::clone(&text);
        std::thread::spawn(move || {
            let mut buffer = [0u8; 4096];
            while let Ok(n @ 1..) = from.read(&mut buffer) {
                into.lock()
                    .unwrap()
                    .push_str(&String::from_utf8_lossy(&buffer[..n]));
            }
        });
        text
    };
    let stdout = collect(Box::new(child.stdout.take().unwrap()));
    let stderr = collect(Box::new(child.stderr.take().unwrap()));
    wait_until(timeout, || {
        let ended = child.try_wait().unwrap().is_some();
        until(&stdout.lock().unwrap(), ended)
    });
    let _ = Command::new("kill")
        .args(["-KILL", "--", &format!("-{group}")])
        .status();
    let _ = child.wait();
    let ran = Ran {
        stdout: stdout.lock().unwrap().clone(),
        stderr: stderr.lock().unwrap().clone(),
    };
    ran
}

#[test]
fn the_two_minute_tour_runs_as_written() {
    let _ports = default_ports();
    let block = block_after("## A two-minute tour");
    assert!(block.contains("kill -9 $primary"), "{block}");
    let ran = run_block(
        &block,
        "sleep 0.5",
        |_, ended| ended,
        Duration::from_secs(60),
    );
    let hello = ran.said("zbridge request --target pc2 hello");
    assert!(hello.contains("pc2") && hello.contains("hello"), "{hello}");
    assert!(ran.stderr.contains("unknown_target"), "{}", ran.stderr);
    let status = ran.said("zbridge status ");
    assert!(status.contains("\"role\": \"active\""), "{status}");
    let after = ran.said("zbridge request --target pc2 at once");
    assert!(after.contains("at once"), "{after}\n{}", ran.stderr);
    let role = ran.said("zbridge status | grep");
    assert_eq!(
        (role.lines().skip(1))
            .filter(|l| l.contains("\"role\""))
            .count(),
        1,
        "one role, the bridge's own: {role}"
    );
    assert!(role.contains("\"role\": \"active\""), "{role}");
}

#[test]
fn the_streams_example_runs_as_written() {
    let _ports = default_ports();
    let block = block_after("Streams bring PUB services across");
    // The subscriber prints one line per message until it is stopped.
    let line = "dreamworld #1 dream.event | ";
    let ran = run_block(
        &block,
        "",
        |out, _| out.contains(line),
        Duration::from_secs(30),
    );
    assert!(ran.stdout.contains(line), "{}\n{}", ran.stdout, ran.stderr);
    assert!(
        !root().join("streams.toml").exists(),
        "nothing written into the repository"
    );
}

#[test]
fn the_curve_example_runs_as_written() {
    let _ports = default_ports();
    let dir = std::path::Path::new("/tmp/zbridge-curve");
    let _ = std::fs::remove_dir_all(dir);
    let block = block_after("Encryption and authentication between the machines");
    // The bridge started in the background: until it says it is ready.
    let ready = || {
        std::fs::read_to_string(dir.join("primary.log")).is_ok_and(|l| l.contains("zbridge ready"))
    };
    let ran = run_block(
        &block,
        "",
        |_, ended| ended && ready(),
        Duration::from_secs(30),
    );
    let checked = ran.said("zbridge check-config curve.toml");
    let public = std::fs::read_to_string(dir.join("bridge.key.pub")).unwrap();
    assert!(checked.contains(public.trim()), "{checked}\n{}", ran.stderr);
    assert!(checked.contains("1 client key(s) admitted"), "{checked}");
    assert!(ready(), "{}", ran.stderr);
    let _ = std::fs::remove_dir_all(dir);
}
