//! Processes a test owns: a bridge or any child that is killed (SIGKILL)
//! and reaped when dropped, its log kept and searchable; free ports, a
//! temporary config file, and waiting for a condition with a deadline.

use anyhow::{bail, Context as _};
use serde_json::Value;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A TCP port on 127.0.0.1 that nobody listens on right now and that this
/// process has not handed out before: the OS may give a port it just
/// released again, and two "free" ports in one configuration must differ.
pub fn free_port() -> u16 {
    static GIVEN: Mutex<Vec<u16>> = Mutex::new(Vec::new());
    let mut given = GIVEN.lock().unwrap_or_else(|e| e.into_inner());
    loop {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map_or(0, |a| a.port());
        if port == 0 {
            return 0;
        }
        if !given.contains(&port) {
            given.push(port);
            return port;
        }
    }
}

/// A config file that is deleted when dropped.
pub struct TempConfig(pub std::path::PathBuf);

impl TempConfig {
    pub fn new(toml: &str) -> TempConfig {
        static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let path = std::env::temp_dir().join(format!(
            "zbridge-{}-{}.toml",
            std::process::id(),
            N.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        ));
        // A test or benchmark cannot go on without its config.
        std::fs::write(&path, toml).expect("write a config file to the temp directory");
        TempConfig(path)
    }

    pub fn flag(&self) -> String {
        format!("--config={}", self.0.display())
    }
}

impl Drop for TempConfig {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Flags for a lone bridge that needs no peer: active at once on a free
/// port, heartbeats on a free port, its peer looked for where nobody is.
pub fn lone_bridge_flags() -> Vec<String> {
    let mut flags: Vec<String> = [
        "--mode=active",
        "--primary-port=0",
        "--primary-heartbeat-port=0",
        "--primary-monitor-port=0",
        "--heartbeat-interval=0.05",
        "--heartbeat-timeout=0.2",
    ]
    .map(String::from)
    .to_vec();
    flags.push(format!("--secondary-heartbeat-port={}", free_port()));
    flags
}

/// Retry `condition` until it holds or `timeout` passes.
pub fn wait_until(timeout: Duration, mut condition: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if condition() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// A child process whose stderr is kept as its log. Dropping it kills it
/// (SIGKILL) and reaps it, also when a test fails.
pub struct Process {
    child: Child,
    log: Arc<Mutex<Vec<String>>>,
    /// stdout lines, with the time each was read.
    out: Arc<Mutex<Vec<(Instant, String)>>>,
}

impl Process {
    /// Start `command` and wait until a line on its stdout satisfies
    /// `ready`; that line is returned.
    pub fn spawn(
        mut command: Command,
        ready: impl Fn(&str) -> bool,
    ) -> anyhow::Result<(Process, String)> {
        let name = format!("{:?}", command.get_program());
        let mut child = command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("cannot start {name}"))?;
        let log = Arc::new(Mutex::new(Vec::new()));
        let out = Arc::new(Mutex::new(Vec::new()));
        let (lines, ready_rx) = mpsc::channel();
        if let Some(stdout) = child.stdout.take() {
            let out = Arc::clone(&out);
            std::thread::spawn(move || {
                for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                    if let Ok(mut out) = out.lock() {
                        out.push((Instant::now(), line.clone()));
                    }
                    let _ = lines.send(line);
                }
            });
        }
        if let Some(stderr) = child.stderr.take() {
            let log = Arc::clone(&log);
            std::thread::spawn(move || {
                for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                    if let Ok(mut log) = log.lock() {
                        log.push(line);
                    }
                }
            });
        }
        let mut process = Process { child, log, out };
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match ready_rx.recv_timeout(left) {
                Ok(line) if ready(&line) => return Ok((process, line)),
                Ok(_) => {}
                Err(_) => {
                    let status = process.child.try_wait().ok().flatten();
                    bail!(
                        "{name} did not become ready (exit: {status:?}); its log:\n{}",
                        process.log().join("\n")
                    );
                }
            }
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The log lines (stderr) so far.
    pub fn log(&self) -> Vec<String> {
        self.log.lock().map(|l| l.clone()).unwrap_or_default()
    }

    /// The first JSON line on stdout that satisfies `pred`, with the time
    /// it was read; waits up to `timeout` for it.
    pub fn wait_for_event(
        &self,
        timeout: Duration,
        pred: impl Fn(&Value) -> bool,
    ) -> Option<(Instant, Value)> {
        let mut found = None;
        wait_until(timeout, || {
            let out = self.out.lock().map(|o| o.clone()).unwrap_or_default();
            found = out.into_iter().find_map(|(at, line)| {
                let doc: Value = serde_json::from_str(&line).ok()?;
                pred(&doc).then_some((at, doc))
            });
            found.is_some()
        });
        found
    }

    /// The lines on stdout so far.
    pub fn output(&self) -> Vec<String> {
        let out = self.out.lock().map(|o| o.clone()).unwrap_or_default();
        out.into_iter().map(|(_, line)| line).collect()
    }

    /// Wait until a line on stdout contains `needle`.
    pub fn wait_for_output(&self, needle: &str, timeout: Duration) -> bool {
        wait_until(timeout, || self.output().iter().any(|l| l.contains(needle)))
    }

    /// Wait until a log line contains `needle`.
    pub fn wait_for_log(&self, needle: &str, timeout: Duration) -> bool {
        wait_until(timeout, || self.log().iter().any(|l| l.contains(needle)))
    }

    /// Send a signal by name (`TERM`, `KILL`, `STOP`, ...) with kill(1).
    pub fn signal(&self, name: &str) -> anyhow::Result<()> {
        let status = Command::new("kill")
            .arg(format!("-{name}"))
            .arg(self.pid().to_string())
            .status()?;
        if !status.success() {
            bail!("kill -{name} {} failed", self.pid());
        }
        Ok(())
    }

    /// Wait for the process to exit.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let mut status = None;
        wait_until(timeout, || {
            status = self.child.try_wait().ok().flatten();
            status.is_some()
        });
        status
    }

    /// Every JSON line printed on stdout so far.
    pub fn events(&self) -> Vec<Value> {
        self.timed_events().into_iter().map(|(_, e)| e).collect()
    }

    /// Every JSON line printed on stdout so far, with the time it was read.
    pub fn timed_events(&self) -> Vec<(Instant, Value)> {
        let out = self.out.lock().map(|o| o.clone()).unwrap_or_default();
        out.into_iter()
            .filter_map(|(at, line)| Some((at, serde_json::from_str(&line).ok()?)))
            .collect()
    }

    /// Open file descriptors, from /proc.
    pub fn fds(&self) -> Option<u64> {
        let dir = std::fs::read_dir(format!("/proc/{}/fd", self.pid())).ok()?;
        Some(dir.count() as u64)
    }

    /// CPU time (user and system) of all its threads so far, from the
    /// kernel's accounting.
    pub fn cpu_seconds(&self) -> Option<f64> {
        cpu_seconds(&format!("/proc/{}/stat", self.pid()))
    }

    /// Resident memory in KiB, from /proc.
    pub fn rss_kb(&self) -> Option<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).ok()?;
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
    }
}

/// User plus system CPU seconds from a `/proc/.../stat` file (a process's
/// or one thread's): fields 14 and 15, in USER_HZ (100 per second on Linux).
pub fn cpu_seconds(stat: &str) -> Option<f64> {
    let text = std::fs::read_to_string(stat).ok()?;
    // The command name (field 2) may hold spaces: count after its ')'.
    let fields: Vec<&str> = text.rsplit_once(')')?.1.split_whitespace().collect();
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    Some(ticks as f64 / 100.0)
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A `zbridge run` process, ready: its frontend is bound.
pub struct BridgeProcess {
    pub process: Process,
    /// The ready line's `frontend` endpoint.
    pub frontend: String,
    /// The whole ready line.
    pub ready: Value,
}

impl BridgeProcess {
    /// Start `exe run ARGS...` and wait for its ready line.
    pub fn spawn(exe: &Path, args: &[String]) -> anyhow::Result<BridgeProcess> {
        let mut command = Command::new(exe);
        command.arg("run").args(args);
        BridgeProcess::start(command)
    }

    /// Start a command that runs `zbridge run` (e.g. inside a network
    /// namespace) and wait for its ready line.
    pub fn start(command: Command) -> anyhow::Result<BridgeProcess> {
        let (process, line) = Process::spawn(command, |line| {
            serde_json::from_str::<Value>(line).is_ok_and(|doc| doc["event"] == "ready")
        })?;
        let ready: Value = serde_json::from_str(&line)?;
        Ok(BridgeProcess {
            process,
            frontend: ready["frontend"].as_str().unwrap_or_default().into(),
            ready,
        })
    }
}

impl std::ops::Deref for BridgeProcess {
    type Target = Process;
    fn deref(&self) -> &Process {
        &self.process
    }
}

impl std::ops::DerefMut for BridgeProcess {
    fn deref_mut(&mut self) -> &mut Process {
        &mut self.process
    }
}
