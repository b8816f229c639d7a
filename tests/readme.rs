//! The README's two-minute tour, run as written: its shell block in bash,
//! from the repository root, with the binary just built first on `PATH`
//! (the block's own `cargo build` line skipped: the suite built it). The
//! tour uses the default ports (5600-5621), as a newcomer would.

use crate::support::*;
use std::process::{Command, Stdio};
use std::time::Duration;

/// The shell block that follows `heading` in README.md.
fn block_after(heading: &str) -> String {
    let readme = std::fs::read_to_string(root().join("README.md")).unwrap();
    let from = readme.find(heading).expect("the heading");
    let rest = &readme[from..];
    let start = rest.find("```sh\n").expect("a sh block") + "```sh\n".len();
    let end = rest[start..].find("```").expect("the block's end");
    rest[start..start + end].to_string()
}

#[test]
fn the_two_minute_tour_runs_as_written() {
    let block = block_after("## A two-minute tour");
    assert!(block.contains("kill -9 $primary"), "{block}");
    // Each command echoed before it runs, so that its output can be told
    // apart; the build line is the suite's own.
    let script: String = block
        .lines()
        .filter(|l| !l.starts_with("cargo build"))
        .map(|l| format!("echo '>>> {}'\n{l}\nsleep 0.5\n", l.replace('\'', "")))
        .collect();
    let bin = exe().parent().unwrap().display().to_string();
    let path = format!("{bin}:{}", std::env::var("PATH").unwrap_or_default());
    let child = Command::new("setsid")
        .args(["bash", "-c", &script])
        .current_dir(root())
        .env("PATH", path)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let group = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    let out = rx.recv_timeout(Duration::from_secs(60));
    // Whatever happened, nothing the tour started outlives the test.
    let _ = Command::new("kill")
        .args(["-KILL", "--", &format!("-{group}")])
        .status();
    let out = out.expect("the tour ends within a minute").unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let said = |command: &str| -> String {
        let from = text
            .find(&format!(">>> {command}"))
            .unwrap_or_else(|| panic!("`{command}` did not run:\n{text}"));
        let rest = &text[from..];
        let end = rest[4..].find(">>> ").map_or(rest.len(), |i| i + 4);
        rest[..end].to_string()
    };
    let hello = said("zbridge request --target pc2 hello");
    assert!(hello.contains("pc2") && hello.contains("hello"), "{hello}");
    let errors = String::from_utf8_lossy(&out.stderr);
    assert!(errors.contains("unknown_target"), "{errors}");
    let status = said("zbridge status ");
    assert!(status.contains("\"role\": \"active\""), "{status}");
    let after = said("zbridge request --target pc2 at once");
    assert!(after.contains("at once"), "{after}\n{errors}");
    let role = said("zbridge status | grep");
    assert_eq!(
        (role.lines().skip(1))
            .filter(|l| l.contains("\"role\""))
            .count(),
        1,
        "one role, the bridge's own: {role}"
    );
    assert!(role.contains("\"role\": \"active\""), "{role}");
}
