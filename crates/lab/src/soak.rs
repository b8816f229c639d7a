//! `zbridge bench soak`: a pair on loopback under a steady retrying load,
//! with faults of the active injected at random times (kill -9,
//! SIGSTOP+SIGCONT, SIGTERM, each killed instance restarted). Samples the
//! bridges' RSS and open fds, counts moments with two actives that can hear
//! each other, and ends with one JSON line.

use crate::{BridgeProcess, LoopbackPair, Retrying, RetryingReport};
use serde_json::{json, Value};
use std::path::Path;
use std::time::{Duration, Instant};

pub struct Soak {
    pub duration: Duration,
    /// Requests per second of the client.
    pub rate: f64,
    /// A fault comes after a random wait in this range.
    pub fault_every: (Duration, Duration),
    pub heartbeat_interval: Duration,
    pub heartbeat_timeout: Duration,
    pub seed: u64,
}

#[derive(Debug, Default)]
pub struct SoakReport {
    pub client: RetryingReport,
    pub faults: Vec<&'static str>,
    /// Takeovers by a passive (the role events of every instance).
    pub failovers: u64,
    /// Samples in which both instances were active and heard each other.
    pub split_brain: u64,
    /// (seconds since start, RSS KiB, open fds), summed over the instances.
    pub samples: Vec<(f64, u64, u64)>,
}

impl SoakReport {
    pub fn json(&self) -> Value {
        let first = self.samples.first().copied().unwrap_or_default();
        let last = self.samples.last().copied().unwrap_or_default();
        json!({
            "sent": self.client.sent, "ok": self.client.ok, "lost": self.client.lost,
            "failovers": self.failovers, "faults": self.faults.len(),
            "split_brain": self.split_brain,
            "rss_start_kb": first.1, "rss_end_kb": last.1,
            "fds_start": first.2, "fds_end": last.2,
            "max_wait_ms": self.client.max_wait.as_secs_f64() * 1e3,
        })
    }
}

/// The node of an instance: 0 primary (`--mode active`), 1 secondary.
const MODES: [&str; 2] = ["active", "passive"];

impl Soak {
    pub fn run(&self, exe: &Path, progress: &mut dyn FnMut(&str)) -> anyhow::Result<SoakReport> {
        let pair = LoopbackPair::new(self.heartbeat_interval, self.heartbeat_timeout)?;
        let mut instances: [Option<BridgeProcess>; 2] = [None, None];
        for (node, mode) in MODES.iter().enumerate() {
            instances[node] = Some(BridgeProcess::spawn(exe, &pair.flags(mode))?);
        }
        let client = Retrying {
            endpoints: pair.endpoints(),
            target: "pc2".into(),
            rate: self.rate,
            duration: self.duration,
            attempt_timeout: self.heartbeat_timeout.min(Duration::from_millis(500)),
            give_up: Duration::from_secs(30),
        };
        let load = std::thread::spawn(move || client.run());
        let start = Instant::now();
        let mut report = SoakReport::default();
        // Every process that ever ran, for its role events at the end.
        let mut done: Vec<BridgeProcess> = Vec::new();
        let mut rng = crate::Rng::new(self.seed);
        let mut random = |range: (Duration, Duration)| rng.between(range.0, range.1);
        let mut next_fault = start + random(self.fault_every);
        let mut next_sample = start;
        while start.elapsed() < self.duration {
            let now = Instant::now();
            if both_active_and_hearing(&instances) {
                report.split_brain += 1;
            }
            if now >= next_sample {
                next_sample = now + Duration::from_secs(1);
                let (rss, fds) = instances.iter().flatten().fold((0, 0), |(r, f), i| {
                    (r + i.rss_kb().unwrap_or(0), f + i.fds().unwrap_or(0))
                });
                report
                    .samples
                    .push((start.elapsed().as_secs_f64(), rss, fds));
                progress(&format!(
                    "{:>6.1}s  rss {rss} KiB  fds {fds}  faults {}",
                    start.elapsed().as_secs_f64(),
                    report.faults.len()
                ));
            }
            if now >= next_fault {
                next_fault = now + random(self.fault_every);
                let pick = random((Duration::ZERO, Duration::from_millis(3))).as_millis();
                let fault = self.fault(exe, &pair, &mut instances, &mut done, pick)?;
                if let Some(fault) = fault {
                    progress(&format!(
                        "{:>6.1}s  fault: {fault}",
                        start.elapsed().as_secs_f64()
                    ));
                    report.faults.push(fault);
                }
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        report.client = load
            .join()
            .map_err(|_| anyhow::anyhow!("the client thread panicked"))??;
        done.extend(instances.into_iter().flatten());
        report.failovers = done
            .iter()
            .map(|p| {
                p.events()
                    .iter()
                    .filter(|e| {
                        e["event"] == "role"
                            && e["to"] == "active"
                            && (e["reason"] == "peer_silent" || e["reason"] == "peer_leaving")
                    })
                    .count() as u64
            })
            .sum();
        Ok(report)
    }

    /// Fault the active instance; restart it if it exits.
    fn fault(
        &self,
        exe: &Path,
        pair: &LoopbackPair,
        instances: &mut [Option<BridgeProcess>; 2],
        done: &mut Vec<BridgeProcess>,
        pick: u128,
    ) -> anyhow::Result<Option<&'static str>> {
        let Some(node) = (0..2).find(|&n| role(instances[n].as_ref()) == Some("active".into()))
        else {
            return Ok(None);
        };
        let Some(process) = instances[node].as_mut() else {
            return Ok(None);
        };
        let kind = match pick % 3 {
            0 => "kill -9",
            1 => "SIGSTOP+SIGCONT",
            _ => "SIGTERM",
        };
        match kind {
            "kill -9" => process.signal("KILL")?,
            "SIGTERM" => process.signal("TERM")?,
            _ => {
                process.signal("STOP")?;
                std::thread::sleep(self.heartbeat_timeout * 3);
                process.signal("CONT")?;
                return Ok(Some(kind));
            }
        }
        process.wait_exit(Duration::from_secs(15));
        if let Some(old) = instances[node].take() {
            done.push(old);
        }
        // As in life, the dead instance comes back after the survivor has
        // taken over (a restart at once could find the port free first).
        let survivor = instances[1 - node].as_ref();
        crate::wait_until(self.heartbeat_timeout * 20, || {
            role(survivor) == Some("active".into())
        });
        instances[node] = Some(BridgeProcess::spawn(exe, &pair.flags(MODES[node]))?);
        Ok(Some(kind))
    }
}

/// The role an instance reports over its monitoring HTTP, if it answers.
fn role(instance: Option<&BridgeProcess>) -> Option<String> {
    let status = status(instance?)?;
    status["role"].as_str().map(str::to_string)
}

fn status(instance: &BridgeProcess) -> Option<Value> {
    let monitor = instance.ready["monitor"].as_str()?;
    let body = crate::http_get(&format!("{monitor}/status"), Duration::from_millis(300))?;
    serde_json::from_str(&body).ok()
}

fn both_active_and_hearing(instances: &[Option<BridgeProcess>; 2]) -> bool {
    instances.iter().all(|i| {
        i.as_ref()
            .and_then(status)
            .is_some_and(|s| s["role"] == "active" && s["peer"]["alive"] == true)
    })
}
