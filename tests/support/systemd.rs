//! systemd's part, played exactly: a notify socket (`NOTIFY_SOCKET`, a
//! Unix datagram socket) that records what a service sends, and its
//! watchdog: with `WATCHDOG_USEC` set, a running service that sends no
//! `WATCHDOG=1` for that long is sent SIGKILL (`WatchdogSignal=SIGKILL`);
//! one that said `STOPPING=1` is left to its stop.

use std::os::unix::net::UnixDatagram;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

pub struct Supervisor {
    pub path: PathBuf,
    /// Every message received, with the time it came.
    messages: Arc<Mutex<Vec<(Instant, String)>>>,
    /// The watched pid (0: none yet) and the watchdog's timeout.
    pid: Arc<AtomicU32>,
    pub watchdog: Duration,
    /// When the watchdog killed the service.
    killed: Arc<Mutex<Option<Instant>>>,
    /// A port to try when READY=1 comes (0: none), and whether a TCP
    /// connect to it succeeded right then.
    probe: Arc<AtomicU32>,
    bound_at_ready: Arc<Mutex<Option<bool>>>,
    done: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Supervisor {
    /// A notify socket and a watchdog of `watchdog` (armed by [`Supervisor::watch`]).
    pub fn new(watchdog: Duration) -> Supervisor {
        let path = std::env::temp_dir().join(format!(
            "zbridge-notify-{}-{}",
            std::process::id(),
            crate::support::free_port()
        ));
        let _ = std::fs::remove_file(&path);
        let socket = UnixDatagram::bind(&path).expect("bind the notify socket");
        socket
            .set_read_timeout(Some(Duration::from_millis(10)))
            .unwrap();
        let messages = Arc::new(Mutex::new(Vec::new()));
        let pid = Arc::new(AtomicU32::new(0));
        let killed = Arc::new(Mutex::new(None));
        let done = Arc::new(AtomicBool::new(false));
        let probe = Arc::new(AtomicU32::new(0));
        let bound_at_ready = Arc::new(Mutex::new(None));
        let thread = {
            let (messages, pid, killed, done, probe, bound_at_ready) = (
                Arc::clone(&messages),
                Arc::clone(&pid),
                Arc::clone(&killed),
                Arc::clone(&done),
                Arc::clone(&probe),
                Arc::clone(&bound_at_ready),
            );
            std::thread::spawn(move || {
                let mut buf = [0u8; 4096];
                let mut last_ping: Option<Instant> = None;
                while !done.load(Ordering::Relaxed) {
                    if let Ok(n) = socket.recv(&mut buf) {
                        let text = String::from_utf8_lossy(&buf[..n]).into_owned();
                        let now = Instant::now();
                        if text.lines().any(|l| l == "WATCHDOG=1" || l == "READY=1") {
                            last_ping = Some(now);
                        }
                        // A stopping service is under TimeoutStopSec, not
                        // the watchdog.
                        if text.lines().any(|l| l == "STOPPING=1") {
                            pid.store(0, Ordering::Relaxed);
                        }
                        let port = probe.load(Ordering::Relaxed) as u16;
                        if port != 0 && text.lines().any(|l| l == "READY=1") {
                            let bound = std::net::TcpStream::connect(("127.0.0.1", port)).is_ok();
                            bound_at_ready.lock().unwrap().get_or_insert(bound);
                        }
                        messages.lock().unwrap().push((now, text));
                    }
                    let watched = pid.load(Ordering::Relaxed);
                    let overdue = last_ping.is_some_and(|at| at.elapsed() >= watchdog);
                    if watched != 0 && overdue && killed.lock().unwrap().is_none() {
                        *killed.lock().unwrap() = Some(Instant::now());
                        let pid = nix::unistd::Pid::from_raw(watched as i32);
                        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
                    }
                }
            })
        };
        Supervisor {
            path,
            messages,
            pid,
            watchdog,
            killed,
            probe,
            bound_at_ready,
            done,
            thread: Some(thread),
        }
    }

    /// The environment systemd gives a `Type=notify` service with
    /// `WatchdogSec=`.
    pub fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("NOTIFY_SOCKET", self.path.display().to_string()),
            ("WATCHDOG_USEC", self.watchdog.as_micros().to_string()),
        ]
    }

    /// Try a TCP connect to `port` when READY=1 comes.
    pub fn probe_on_ready(&self, port: u16) {
        self.probe.store(u32::from(port), Ordering::Relaxed);
    }

    /// Whether the probed port took a connection when READY=1 came.
    pub fn bound_at_ready(&self) -> Option<bool> {
        *self.bound_at_ready.lock().unwrap()
    }

    /// Kill `pid` when its pings stop for the watchdog's timeout.
    pub fn watch(&self, pid: u32) {
        self.pid.store(pid, Ordering::Relaxed);
    }

    pub fn messages(&self) -> Vec<(Instant, String)> {
        self.messages.lock().unwrap().clone()
    }

    /// The first message with a line `line`, waited for.
    pub fn wait_for(&self, line: &str, timeout: Duration) -> Option<(Instant, String)> {
        let mut found = None;
        crate::support::wait_until(timeout, || {
            found = self
                .messages()
                .into_iter()
                .find(|(_, m)| m.lines().any(|l| l == line || l.starts_with(line)));
            found.is_some()
        });
        found
    }

    /// The times of the watchdog pings.
    pub fn pings(&self) -> Vec<Instant> {
        (self.messages().into_iter())
            .filter(|(_, m)| m.lines().any(|l| l == "WATCHDOG=1"))
            .map(|(at, _)| at)
            .collect()
    }

    /// The longest wait between two pings, and before the first one
    /// after `from` and after the last one until `to`.
    pub fn longest_silence(&self, from: Instant, to: Instant) -> Duration {
        let mut times: Vec<Instant> = self
            .pings()
            .into_iter()
            .filter(|t| (from..=to).contains(t))
            .collect();
        times.insert(0, from);
        times.push(to);
        times
            .windows(2)
            .map(|w| w[1] - w[0])
            .max()
            .unwrap_or_default()
    }

    pub fn killed(&self) -> Option<Instant> {
        *self.killed.lock().unwrap()
    }
}

impl Drop for Supervisor {
    fn drop(&mut self) {
        self.done.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
        let _ = std::fs::remove_file(&self.path);
    }
}
