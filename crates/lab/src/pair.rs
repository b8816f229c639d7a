//! A pair of bridges on loopback with its services, and a failover
//! scenario: load on the pair while the active is made to fail.

use crate::{free_port, status, wait_until, BridgeProcess, EchoService, Retrying, RetryingReport};
use anyhow::bail;
use std::path::Path;
use std::time::{Duration, Instant};

/// How the active bridge is made to fail.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// kill -9: the process dies, the kernel closes its sockets.
    Kill,
    /// SIGSTOP for a while, then SIGCONT: a hung active holding its port.
    Stop,
    /// SIGTERM: a planned handover.
    Term,
}

impl Fault {
    pub fn name(self) -> &'static str {
        match self {
            Fault::Kill => "kill -9",
            Fault::Stop => "SIGSTOP+SIGCONT",
            Fault::Term => "SIGTERM",
        }
    }
}

/// The ports and services of a pair of bridges on loopback: two echo
/// services as targets `main_pc` and `pc2`, free ports for everything.
pub struct LoopbackPair {
    /// Primary and secondary frontend, primary and secondary heartbeat.
    pub ports: [u16; 4],
    monitors: [u16; 2],
    main_pc: EchoService,
    pc2: EchoService,
    interval: Duration,
    timeout: Duration,
}

impl LoopbackPair {
    pub fn new(interval: Duration, timeout: Duration) -> anyhow::Result<LoopbackPair> {
        LoopbackPair::serving(interval, timeout, Duration::ZERO)
    }

    /// A pair whose services take `service` to answer each request.
    pub fn serving(
        interval: Duration,
        timeout: Duration,
        service: Duration,
    ) -> anyhow::Result<LoopbackPair> {
        Ok(LoopbackPair {
            ports: [free_port(), free_port(), free_port(), free_port()],
            monitors: [free_port(), free_port()],
            main_pc: EchoService::taking(None, service)?,
            pc2: EchoService::taking(None, service)?,
            interval,
            timeout,
        })
    }

    /// The flags of the instance started with `--mode MODE`.
    pub fn flags(&self, mode: &str) -> Vec<String> {
        vec![
            format!("--mode={mode}"),
            format!("--primary-port={}", self.ports[0]),
            format!("--secondary-port={}", self.ports[1]),
            format!("--primary-heartbeat-port={}", self.ports[2]),
            format!("--secondary-heartbeat-port={}", self.ports[3]),
            format!("--primary-monitor-port={}", self.monitors[0]),
            format!("--secondary-monitor-port={}", self.monitors[1]),
            format!("--heartbeat-interval={}", self.interval.as_secs_f64()),
            format!("--heartbeat-timeout={}", self.timeout.as_secs_f64()),
            format!("--main-pc-addr={}", self.main_pc.endpoint),
            format!("--pc2-addr={}", self.pc2.endpoint),
        ]
    }

    /// The frontend endpoints, primary port first.
    pub fn endpoints(&self) -> Vec<String> {
        loopback_endpoints(&self.ports[..2])
    }

    /// The heartbeat PUB endpoints, primary first.
    pub fn heartbeat_endpoints(&self) -> Vec<String> {
        loopback_endpoints(&self.ports[2..])
    }
}

/// `tcp://127.0.0.1:PORT` for each port.
pub fn loopback_endpoints(ports: &[u16]) -> Vec<String> {
    ports
        .iter()
        .map(|p| format!("tcp://127.0.0.1:{p}"))
        .collect()
}

/// A pair on loopback with two services, two retrying clients (one knows
/// only the primary port, one knows both), and one fault of the active.
pub struct Failover {
    pub fault: Fault,
    pub heartbeat_interval: Duration,
    pub heartbeat_timeout: Duration,
    /// Requests per second of each client.
    pub rate: f64,
    /// Load before the fault, and after it.
    pub before: Duration,
    pub after: Duration,
    /// How long a stopped active stays stopped.
    pub stopped_for: Duration,
    /// More flags for both bridges (e.g. a config file with streams).
    pub extra_flags: Vec<String>,
}

pub struct FailoverReport {
    /// From the fault to the passive holding the primary port.
    pub takeover: Option<Duration>,
    /// From the fault to the passive logging that it noticed.
    pub detection: Option<Duration>,
    pub primary_only: RetryingReport,
    pub both: RetryingReport,
    pub primary_endpoint: String,
    pub secondary_endpoint: String,
    /// The restarted primary's role (kill -9 only).
    pub rejoined_as: Option<String>,
}

impl Failover {
    /// Run the scenario; `before_load` is called with the primary's
    /// endpoint once the pair is up.
    pub fn run(
        &self,
        exe: &Path,
        before_load: &mut dyn FnMut(&str),
    ) -> anyhow::Result<FailoverReport> {
        let pair = LoopbackPair::new(self.heartbeat_interval, self.heartbeat_timeout)?;
        let flags = |mode: &str| {
            let mut flags = pair.flags(mode);
            flags.extend(self.extra_flags.iter().cloned());
            flags
        };
        let endpoint = |p: u16| format!("tcp://127.0.0.1:{p}");
        let ports = pair.ports;
        let primary = BridgeProcess::spawn(exe, &flags("active"))?;
        let mut primary = Some(primary);
        let secondary = BridgeProcess::spawn(exe, &flags("passive"))?;
        if !wait_until(self.heartbeat_timeout * 10, || {
            status(&secondary.frontend).is_some_and(|s| s["peer"]["alive"] == true)
        }) {
            bail!("the secondary does not hear the primary");
        }
        before_load(&endpoint(ports[0]));
        let client = |endpoints: Vec<String>| Retrying {
            endpoints,
            target: "pc2".into(),
            rate: self.rate,
            duration: self.before + self.after,
            attempt_timeout: self.heartbeat_timeout.min(Duration::from_millis(500)),
            give_up: Duration::from_secs(30),
        };
        let primary_only = client(vec![endpoint(ports[0])]);
        let both = client(vec![endpoint(ports[0]), endpoint(ports[1])]);
        let loads = [primary_only, both].map(|c| std::thread::spawn(move || c.run()));
        std::thread::sleep(self.before);
        let signal = match self.fault {
            Fault::Kill => "KILL",
            Fault::Stop => "STOP",
            Fault::Term => "TERM",
        };
        let faulted = Instant::now();
        if let Some(p) = &primary {
            p.signal(signal)?;
        }
        if self.fault == Fault::Stop {
            std::thread::sleep(self.stopped_for);
            if let Some(p) = &primary {
                p.signal("CONT")?;
            }
        }
        let takeover = secondary
            .wait_for_event(self.after, |e| {
                e["event"] == "bound" && e["port"] == "primary"
            })
            .map(|(at, _)| at.saturating_duration_since(faulted));
        let detection = secondary
            .wait_for_event(self.after, |e| {
                (e["event"] == "bound" || e["event"] == "bind_failed") && e["port"] == "primary"
            })
            .map(|(at, _)| at.saturating_duration_since(faulted));
        let mut reports = Vec::new();
        for load in loads {
            reports.push(
                load.join()
                    .map_err(|_| anyhow::anyhow!("a client thread panicked"))??,
            );
        }
        let mut rejoined_as = None;
        if self.fault == Fault::Kill {
            drop(primary.take());
            let restarted = BridgeProcess::spawn(exe, &flags("active"))?;
            rejoined_as = restarted.ready["role"].as_str().map(str::to_string);
        }
        let both = reports.pop().unwrap_or_default();
        let primary_only = reports.pop().unwrap_or_default();
        Ok(FailoverReport {
            takeover,
            detection,
            primary_only,
            both,
            primary_endpoint: endpoint(ports[0]),
            secondary_endpoint: endpoint(ports[1]),
            rejoined_as,
        })
    }
}
