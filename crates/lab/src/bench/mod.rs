//! `zbridge bench`: measurements, not tests.
//!
//! `bench relay` measures, in one run on loopback, a direct connection to an
//! echo service, libzmq's own ROUTER-DEALER proxy (`zmq::proxy`, the limit
//! for a relay, in a process of its own: `bench proxy`) and a real `zbridge
//! run` process on its JSON and multipart paths, and prints ratios. Every
//! load is bounded in count and time.
//! `bench stream` ([`stream`]) does the same for a stream against libzmq's
//! XSUB/XPUB proxy. `bench python` ([`python`]) measures the Python
//! package against a raw pyzmq DEALER. `bench handover` ([`handover`])
//! counts what planned handovers cost a plain lockstep REQ client.

mod curve;
mod handover;
mod python;
mod stream;

use crate::{
    lone_bridge_flags, BridgeProcess, ClientLoad, ClientLoadReport, EchoService, Failover, Fault,
    Load, LoadReport, LoopbackPair, Route,
};
use anyhow::Context as _;
use serde_json::json;
use std::thread::JoinHandle;
use std::time::Duration;

#[derive(Debug, clap::Subcommand)]
pub enum What {
    /// Relay latency and throughput against libzmq's proxy and direct.
    Relay {
        /// Seconds of each throughput run.
        #[arg(long, default_value_t = 3.0)]
        seconds: f64,
        /// Lockstep requests of each contender's latency figure, split
        /// over --latency-rounds turns.
        #[arg(long, default_value_t = 20_000)]
        latency_requests: u64,
        /// Turns the contenders take in the latency run: each figure is a
        /// median over them, with the middle half of the rounds beside it.
        #[arg(long, default_value_t = 10)]
        latency_rounds: usize,
        /// Requests of the memory run (0 to skip it).
        #[arg(long, default_value_t = 1_000_000)]
        memory_requests: u64,
        /// Rounds over all contenders, interleaved; figures are medians.
        #[arg(long, default_value_t = 3)]
        rounds: usize,
        /// Also libzmq's proxy and the bridge with CURVE on their
        /// frontends (each CURVE figure is compared with the CURVE proxy).
        #[arg(long)]
        curve: bool,
    },
    /// Failover of a live pair: kill -9, SIGSTOP+SIGCONT and SIGTERM of the
    /// active, with default and with fast heartbeat timings.
    Failover {
        /// Requests per second of each of the two clients.
        #[arg(long, default_value_t = 500.0)]
        rate: f64,
    },
    /// Planned handovers (SIGTERM of the active, restarted at once) at
    /// random phases of a plain lockstep REQ client's cycle, per think
    /// time and service time: requests lost, error replies, longest wait.
    Handover {
        /// Handovers per think time and service time.
        #[arg(long, default_value_t = 100)]
        handovers: usize,
        /// The client's think times (ms, comma-separated).
        #[arg(long, value_delimiter = ',', default_values_t = [0.0, 1.0, 20.0, 200.0, 1000.0])]
        think_ms: Vec<f64>,
        /// The services' times to answer (ms, comma-separated).
        #[arg(long, value_delimiter = ',', default_values_t = [0.0, 200.0])]
        service_ms: Vec<f64>,
    },
    /// A sustained load through a live pair that it starts on loopback:
    /// throughput, latency percentiles, errors, lost requests, memory.
    Load {
        /// Requests per second over all clients.
        #[arg(long, default_value_t = 5000.0)]
        rate: f64,
        #[arg(long, default_value_t = 4)]
        clients: usize,
        /// Requests in flight per client, at most.
        #[arg(long, default_value_t = 16)]
        in_flight: usize,
        /// Seconds of load.
        #[arg(long, default_value_t = 10.0)]
        duration: f64,
        #[arg(long, default_value_t = 100)]
        payload_bytes: usize,
        /// JSON requests instead of multipart.
        #[arg(long)]
        json: bool,
    },
    /// Load through the client library (zbridge-client) against the pair
    /// of --config (or --endpoints); the last line is one JSON object.
    /// With --local-pair: a pair it starts on loopback, a raw DEALER beside
    /// the client for throughput, and a kill -9 and a SIGSTOP of the active
    /// mid-run.
    Client {
        /// The bridge config file (its [client] section, if any, applies).
        #[arg(long)]
        config: Option<std::path::PathBuf>,
        /// Bridge frontends in priority order, comma-separated.
        #[arg(long, value_delimiter = ',')]
        endpoints: Vec<String>,
        #[arg(long, default_value = "pc2")]
        target: String,
        /// Calls per second (0: as fast as --in-flight allows).
        #[arg(long, default_value_t = 1000.0)]
        rate: f64,
        /// Seconds of load.
        #[arg(long, default_value_t = 10.0)]
        duration: f64,
        /// Calls in flight at most.
        #[arg(long, default_value_t = 64)]
        in_flight: usize,
        #[arg(long, default_value_t = 100)]
        payload_bytes: usize,
        /// Start pairs on loopback and measure throughput, kill -9 and SIGSTOP.
        #[arg(long)]
        local_pair: bool,
    },
    /// A stream against libzmq's XSUB/XPUB proxy and a direct
    /// subscription, then a kill -9 of the active under a paced stream.
    Stream {
        /// Seconds of each throughput run.
        #[arg(long, default_value_t = 3.0)]
        seconds: f64,
        /// Rounds over all contenders, interleaved; figures are medians.
        #[arg(long, default_value_t = 3)]
        rounds: usize,
        /// Messages per second during the kill -9.
        #[arg(long, default_value_t = 1000.0)]
        rate: f64,
    },
    /// The Python package (zbridge.Client, blocking and asyncio) against
    /// a raw pyzmq DEALER with as many requests in flight, through a pair
    /// it starts on loopback (bench/python_client.py).
    Python {
        /// A Python with the zbridge package and pyzmq installed.
        #[arg(long, default_value = "target/venv/bin/python")]
        python: std::path::PathBuf,
        /// Seconds of each contender's run in a round.
        #[arg(long, default_value_t = 2.0)]
        seconds: f64,
        /// Rounds over the contenders, interleaved; figures are medians.
        #[arg(long, default_value_t = 5)]
        rounds: usize,
        /// Requests in flight, for each contender.
        #[arg(long, default_value_t = 64)]
        in_flight: usize,
    },
    /// A pair under load for a long time, with faults of the active at
    /// random times; RSS and fds sampled; a JSON line at the end.
    Soak {
        /// Seconds of the whole run.
        #[arg(long, default_value_t = 1800)]
        duration: u64,
        /// Requests per second of the client.
        #[arg(long, default_value_t = 200.0)]
        rate: f64,
        /// Seconds between faults (random in [N, 2N]).
        #[arg(long, default_value_t = 30)]
        fault_every: u64,
        #[arg(long, default_value_t = 1)]
        seed: u64,
    },
    /// libzmq's proxy in a process of its own (the contender the other
    /// benches start): binds `front` on loopback, prints its endpoint,
    /// connects `back` to UPSTREAM and forwards until killed.
    #[command(hide = true)]
    Proxy {
        #[arg(long, value_enum)]
        front: Kind,
        #[arg(long, value_enum)]
        back: Kind,
        #[arg(long)]
        upstream: String,
        /// Make the frontend a CURVE server with this key file's pair.
        #[arg(long)]
        curve_secret_key_file: Option<std::path::PathBuf>,
    },
}

/// The socket types a proxy is made of.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum Kind {
    Router,
    Dealer,
    Xpub,
    Xsub,
}

impl Kind {
    fn socket_type(self) -> zmq::SocketType {
        match self {
            Kind::Router => zmq::ROUTER,
            Kind::Dealer => zmq::DEALER,
            Kind::Xpub => zmq::XPUB,
            Kind::Xsub => zmq::XSUB,
        }
    }
}

pub fn run(what: What) -> anyhow::Result<()> {
    match what {
        What::Relay {
            seconds,
            latency_requests,
            latency_rounds,
            memory_requests,
            rounds,
            curve,
        } => relay(
            seconds,
            (latency_requests, latency_rounds.max(1)),
            memory_requests,
            rounds.max(1),
            curve,
        ),
        What::Failover { rate } => failover(rate),
        What::Handover {
            handovers,
            think_ms,
            service_ms,
        } => {
            let durations = |ms: &[f64], what: &str| {
                ms.iter()
                    .map(|&ms| Duration::try_from_secs_f64(ms / 1e3))
                    .collect::<Result<Vec<_>, _>>()
                    .with_context(|| format!("--{what}: milliseconds, 0 or more"))
            };
            handover::bench(
                handovers,
                &durations(&think_ms, "think-ms")?,
                &durations(&service_ms, "service-ms")?,
            )
        }
        What::Load {
            rate,
            clients,
            in_flight,
            duration,
            payload_bytes,
            json,
        } => sustained(rate, clients, in_flight, duration, payload_bytes, json),
        What::Client {
            config,
            endpoints,
            target,
            rate,
            duration,
            in_flight,
            payload_bytes,
            local_pair,
        } => {
            let load = ClientLoad {
                target,
                rate: (rate > 0.0).then_some(rate),
                duration: Duration::try_from_secs_f64(duration).context("--duration")?,
                in_flight,
                payload_bytes,
                settle: Duration::from_secs(30),
            };
            if local_pair {
                client_pair(&load)
            } else {
                let settings =
                    zbridge_client::ClientConfig::for_tool(&endpoints, config.as_deref(), None)?;
                client_load(&load, settings)
            }
        }
        What::Stream {
            seconds,
            rounds,
            rate,
        } => stream::stream(seconds, rounds.max(1), rate),
        What::Python {
            python: interpreter,
            seconds,
            rounds,
            in_flight,
        } => python::python(&interpreter, seconds, rounds.max(1), in_flight.max(1)),
        What::Soak {
            duration,
            rate,
            fault_every,
            seed,
        } => {
            let every = Duration::from_secs(fault_every.max(1));
            let soak = crate::soak::Soak {
                duration: Duration::from_secs(duration),
                rate,
                fault_every: (every, every * 2),
                heartbeat_interval: Duration::from_millis(100),
                heartbeat_timeout: Duration::from_millis(300),
                seed,
            };
            let report = soak.run(&std::env::current_exe()?, &mut |line| println!("{line}"))?;
            println!("{}", report.json());
            Ok(())
        }
        What::Proxy {
            front,
            back,
            upstream,
            curve_secret_key_file,
        } => serve_proxy(front, back, &upstream, curve_secret_key_file.as_deref()),
    }
}

/// `bench proxy`: libzmq's proxy, alone in this process.
fn serve_proxy(
    front: Kind,
    back: Kind,
    upstream: &str,
    curve: Option<&std::path::Path>,
) -> anyhow::Result<()> {
    let context = zmq::Context::new();
    let front = context.socket(front.socket_type())?;
    let back = context.socket(back.socket_type())?;
    for s in [&front, &back] {
        s.set_linger(0)?;
    }
    if let Some(path) = curve {
        let pair = zbridge_client::curve::KeyPair::read(path, "--curve-secret-key-file")?;
        pair.serve(&front)?;
    }
    front.bind("tcp://127.0.0.1:*")?;
    back.connect(upstream).with_context(|| {
        format!("--upstream {upstream}: not an endpoint to connect to (tcp://HOST:PORT)")
    })?;
    let endpoint = front
        .get_last_endpoint()?
        .map_err(|_| anyhow::anyhow!("non-UTF-8 endpoint"))?;
    println!("{PROXY_READY}{endpoint}");
    zmq::proxy(&front, &back)?;
    Ok(())
}

/// What `bench proxy` prints before its endpoint once it listens.
const PROXY_READY: &str = "proxy listening on ";

/// libzmq's own proxy (`zmq::proxy`, the same libzmq as the bridge's) in
/// a process of its own, `bench proxy`: a socket of type `front` bound on
/// loopback, one of type `back` connected to `upstream`. A process, as
/// the bridge is and as a deployed proxy would be, so that neither
/// contender shares the bench's address space (a thread switch within
/// one process is cheaper than one between processes). Killed by its pid
/// when dropped.
struct Proxy {
    endpoint: String,
    process: crate::Process,
}

impl Proxy {
    fn start(front: Kind, back: Kind, upstream: &str) -> anyhow::Result<Proxy> {
        Proxy::start_with(front, back, upstream, None)
    }

    /// The proxy with its frontend a CURVE server with the pair in
    /// `curve`, a key file (no ZAP handler: any client that knows the
    /// public key).
    fn start_with(
        front: Kind,
        back: Kind,
        upstream: &str,
        curve: Option<&std::path::Path>,
    ) -> anyhow::Result<Proxy> {
        let mut command = std::process::Command::new(std::env::current_exe()?);
        command.args(["bench", "proxy", "--upstream", upstream]);
        for (flag, kind) in [("--front", front), ("--back", back)] {
            let name = clap::ValueEnum::to_possible_value(&kind)
                .map(|v| v.get_name().to_owned())
                .unwrap_or_default();
            command.args([flag, &name]);
        }
        if let Some(path) = curve {
            command.arg("--curve-secret-key-file").arg(path);
        }
        let (process, line) = crate::Process::spawn(command, |l| l.starts_with(PROXY_READY))?;
        Ok(Proxy {
            endpoint: line[PROXY_READY.len()..].to_owned(),
            process,
        })
    }

    /// CPU time of the proxy's process so far, from the kernel's accounting.
    fn cpu_seconds(&self) -> f64 {
        self.process.cpu_seconds().unwrap_or(0.0)
    }
}

/// GETs `paths` of the monitor every `every` on a thread, until stopped.
struct Scraper {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: JoinHandle<u64>,
}

/// What the operator's page asks for each time it redraws (and the page
/// itself, as if it were reloaded each time).
const PAGE_PATHS: [&str; 5] = ["/", "/status", "/health", "/history", "/events"];

impl Scraper {
    fn start(monitor: &str, every: Duration, paths: &[&str]) -> Scraper {
        use std::sync::atomic::Ordering;
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let urls: Vec<String> = paths.iter().map(|p| format!("{monitor}{p}")).collect();
        let flag = std::sync::Arc::clone(&stop);
        let thread = std::thread::spawn(move || {
            let mut scrapes = 0;
            while !flag.load(Ordering::Relaxed) {
                for url in &urls {
                    if crate::http_get(url, Duration::from_secs(2)).is_some() {
                        scrapes += 1;
                    }
                }
                std::thread::sleep(every);
            }
            scrapes
        });
        Scraper { stop, thread }
    }

    /// Stop and return how many scrapes succeeded.
    fn stop(self) -> u64 {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.thread.join().unwrap_or(0)
    }
}

struct Contender {
    name: &'static str,
    endpoint: String,
    route: Route,
    /// The contender its ratios are taken against: libzmq's proxy, with
    /// CURVE for a CURVE contender.
    baseline: usize,
    curve: Option<zbridge_client::curve::ClientKeys>,
}

/// Each contender's figures in each of `rounds` interleaved rounds
/// (`[contender][round][figure]`), so that a burst of noise on the
/// machine hits every contender alike.
fn interleaved(
    contenders: &[Contender],
    rounds: usize,
    mut measure: impl FnMut(&Contender) -> anyhow::Result<Vec<f64>>,
) -> anyhow::Result<Vec<Vec<Vec<f64>>>> {
    let mut samples: Vec<Vec<Vec<f64>>> = vec![Vec::new(); contenders.len()];
    for _ in 0..rounds {
        for (c, s) in contenders.iter().zip(&mut samples) {
            s.push(measure(c)?);
        }
    }
    Ok(samples)
}

/// The median of each contender's figures over `rounds` interleaved rounds.
fn medians(
    contenders: &[Contender],
    rounds: usize,
    measure: impl FnMut(&Contender) -> anyhow::Result<Vec<f64>>,
) -> anyhow::Result<Vec<Vec<f64>>> {
    Ok(interleaved(contenders, rounds, measure)?
        .into_iter()
        .map(|rounds| {
            (0..rounds[0].len())
                .map(|i| median(&rounds.iter().map(|r| r[i]).collect::<Vec<_>>()))
                .collect()
        })
        .collect())
}

fn median(values: &[f64]) -> f64 {
    quantile(values, 0.5)
}

/// The `q` quantile of `values`, interpolated between the two nearest.
fn quantile(values: &[f64], q: f64) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let at = (v.len().saturating_sub(1) as f64) * q;
    match (v.get(at.floor() as usize), v.get(at.ceil() as usize)) {
        (Some(low), Some(high)) => low + (high - low) * at.fract(),
        _ => f64::NAN,
    }
}

fn relay(
    seconds: f64,
    (latency_requests, latency_rounds): (u64, usize),
    memory_requests: u64,
    rounds: usize,
    with_curve: bool,
) -> anyhow::Result<()> {
    let duration = Duration::try_from_secs_f64(seconds).context("--seconds")?;
    let echo = EchoService::start(None)?;
    let proxy = Proxy::start(Kind::Router, Kind::Dealer, &echo.endpoint)?;
    let exe = std::env::current_exe()?;
    let mut flags = lone_bridge_flags();
    flags.extend([
        "--main-pc-addr=".into(),
        format!("--pc2-addr={}", echo.endpoint),
        "--log-level=warn".into(),
        "--max-in-flight=100000".into(),
    ]);
    let bridge = BridgeProcess::spawn(&exe, &flags)?;
    let mut contenders = vec![
        Contender {
            name: "direct",
            endpoint: echo.endpoint.clone(),
            route: Route::Direct,
            baseline: 1,
            curve: None,
        },
        Contender {
            name: "libzmq proxy",
            endpoint: proxy.endpoint.clone(),
            route: Route::Direct,
            baseline: 1,
            curve: None,
        },
        Contender {
            name: "zbridge multipart",
            endpoint: bridge.frontend.clone(),
            route: Route::Multipart,
            baseline: 1,
            curve: None,
        },
        Contender {
            name: "zbridge json",
            endpoint: bridge.frontend.clone(),
            route: Route::Json,
            baseline: 1,
            curve: None,
        },
    ];
    // With --curve: the same proxy and bridge with CURVE frontends (the
    // pair's key in a temporary directory), clients with a key of their own.
    let curve_parts = if with_curve {
        let parts = curve::Parts::start(&exe, &flags, &echo.endpoint)?;
        contenders.extend(parts.contenders(contenders.len()));
        Some(parts)
    } else {
        None
    };
    let load = |c: &Contender, clients, in_flight, requests, duration, bytes| Load {
        endpoint: c.endpoint.clone(),
        targets: vec!["pc2".into()],
        path: c.route,
        clients,
        in_flight,
        requests,
        duration,
        payload_bytes: bytes,
        settle: Duration::from_secs(5),
        tagged: false,
        rate: None,
        curve: c.curve.clone(),
    };
    println!(
        "zbridge bench relay: loopback, one echo service, all figures from this run, medians of {rounds} interleaved rounds"
    );
    println!("(warming up each contender first)");
    for c in &contenders {
        load(c, 2, 16, 20_000, duration, 100).run()?;
    }

    let per_round = (latency_requests / latency_rounds as u64).max(1);
    println!(
        "\nlatency: 1 client, lockstep, 100 B, {latency_rounds} rounds of {per_round} requests \
         (added = p50 minus direct's p50 in the same round; each figure the median over \
         the rounds, the ratio's middle half of the rounds in brackets)"
    );
    println!(
        "{:<20} {:>9} {:>9} {:>11} {:>17} {:>13}",
        "", "p50 µs", "p99 µs", "added µs", "added / proxy's", "(25%-75%)"
    );
    let latency = interleaved(&contenders, latency_rounds, |c| {
        let mut r = load(c, 1, 1, per_round, Duration::from_secs(120), 100).run()?;
        check(c.name, &r)?;
        Ok(vec![r.quantile_ms(0.5) * 1e3, r.quantile_ms(0.99) * 1e3])
    })?;
    // What contender `c` added to a direct round trip in each round.
    let added = |c: usize| -> Vec<f64> {
        (latency[c].iter().zip(&latency[0]))
            .map(|(r, direct)| r[0] - direct[0])
            .collect()
    };
    let mut latency_json = serde_json::Map::new();
    for (i, c) in contenders.iter().enumerate() {
        let figure = |f: usize| median(&latency[i].iter().map(|r| r[f]).collect::<Vec<_>>());
        let (p50, p99, added_us) = (figure(0), figure(1), median(&added(i)));
        // Each round's ratio, of figures taken seconds apart.
        let ratios: Vec<f64> = (added(i).iter().zip(added(c.baseline)))
            .filter(|(_, baseline)| *baseline > 0.0)
            .map(|(a, baseline)| a / baseline)
            .collect();
        let (ratio, low, high) = (
            median(&ratios),
            quantile(&ratios, 0.25),
            quantile(&ratios, 0.75),
        );
        let (ratio_text, spread) = if i == 0 {
            (String::new(), String::new())
        } else {
            (format!("{ratio:.2}x"), format!("({low:.2}-{high:.2})"))
        };
        println!(
            "{:<20} {p50:>9.1} {p99:>9.1} {added_us:>11.1} {ratio_text:>17} {spread:>13}",
            c.name
        );
        latency_json.insert(
            c.name.into(),
            json!({
                "p50_us": p50,
                "p99_us": p99,
                "added_us": added_us,
                "added_vs_proxy": ratio,
                "added_vs_proxy_middle_half": [low, high],
            }),
        );
    }

    // CPU of the relay (the bridge's process, the proxy's process) per
    // 100,000 requests, in the 8 x 16 runs at 100 B.
    let cpu_of = |c: &Contender| match c.name {
        "libzmq proxy" => Some(proxy.cpu_seconds()),
        "zbridge multipart" | "zbridge json" => bridge.process.cpu_seconds(),
        _ => None,
    };
    let mut throughput_json = serde_json::Map::new();
    let mut cpu_json = serde_json::Map::new();
    for bytes in [100, 16 * 1024] {
        let mut per_size = serde_json::Map::new();
        for (clients, in_flight) in [(8, 16), (1, 16), (8, 1)] {
            let cell = format!("{clients}x{in_flight}");
            let with_cpu = bytes == 100 && cell == "8x16";
            println!(
                "\nthroughput: {clients} client(s) x {in_flight} in flight, {bytes} B, {:.1} s each",
                duration.as_secs_f64()
            );
            println!(
                "{:<20} {:>12} {:>10} {:>10} {:>18}",
                "",
                "req/s",
                "/ proxy",
                "/ direct",
                if with_cpu { "CPU s / 100k req" } else { "" }
            );
            let figures = medians(&contenders, rounds, |c| {
                let cpu = cpu_of(c);
                let r = load(c, clients, in_flight, u64::MAX, duration, bytes).run()?;
                check(c.name, &r)?;
                let cpu = match (cpu, cpu_of(c)) {
                    (Some(a), Some(b)) => (b - a) / r.ok.max(1) as f64 * 1e5,
                    _ => f64::NAN,
                };
                Ok(vec![r.throughput(), cpu])
            })?;
            let rates: Vec<f64> = figures.iter().map(|f| f[0]).collect();
            let mut per_cell = serde_json::Map::new();
            for (c, f) in contenders.iter().zip(&figures) {
                let (rate, proxy) = (f[0], rates[c.baseline]);
                let cpu = if with_cpu && f[1].is_finite() {
                    format!("{:.3}", f[1])
                } else {
                    String::new()
                };
                println!(
                    "{:<20} {rate:>12.0} {:>9.2}x {:>9.2}x {cpu:>18}",
                    c.name,
                    rate / proxy,
                    rate / rates[0]
                );
                per_cell.insert(
                    c.name.into(),
                    json!({"rps": rate, "vs_proxy": rate / proxy, "vs_direct": rate / rates[0]}),
                );
                if with_cpu && f[1].is_finite() {
                    cpu_json.insert(c.name.into(), json!(f[1]));
                }
            }
            per_size.insert(cell, per_cell.into());
        }
        throughput_json.insert(format!("{bytes}B"), per_size.into());
    }
    println!("\n(CPU: user + system seconds from the kernel's accounting, the bridge's whole process, the proxy's whole process)");

    // The monitor being scraped must not slow the relay (issue 6: within 5%).
    let monitor = bridge.ready["monitor"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let scraped = medians(&contenders[2..3], rounds, |c| {
        let mut figures = Vec::new();
        // Unscraped; /metrics every 100 ms; the operator's page open and
        // polling four times as often as a real one, with the whole
        // /history each time.
        let watchers: [Option<(u64, &[&str])>; 3] =
            [None, Some((100, &["/metrics"])), Some((250, &PAGE_PATHS))];
        for watcher in watchers {
            let scraper = watcher
                .map(|(ms, paths)| Scraper::start(&monitor, Duration::from_millis(ms), paths));
            let r = load(c, 8, 16, u64::MAX, duration, 100).run()?;
            check(c.name, &r)?;
            figures.push(r.throughput());
            if let Some(scraper) = scraper {
                figures.push(scraper.stop() as f64);
            }
        }
        Ok(figures)
    })?;
    let (quiet, busy, scrapes) = (scraped[0][0], scraped[0][1], scraped[0][2]);
    let (paged, gets) = (scraped[0][3], scraped[0][4]);
    println!(
        "\nmonitoring: multipart 100 B throughput {quiet:.0} req/s unscraped, {busy:.0} req/s with /metrics scraped every 100 ms ({scrapes:.0} scrapes a run): {:.3}x",
        busy / quiet
    );
    println!(
        "operator's page: {paged:.0} req/s with the page's five documents asked every 250 ms ({gets:.0} GETs a run): {:.3}x of unscraped",
        paged / quiet
    );
    let scrape_json = json!({
        "rps_quiet": quiet, "rps_scraped": busy, "ratio": busy / quiet,
        "rps_page_open": paged, "ratio_page_open": paged / quiet,
    });

    let mut memory_json = json!(null);
    if memory_requests > 0 {
        let warm = bridge.rss_kb().unwrap_or(0);
        let r = load(
            &contenders[2],
            8,
            16,
            memory_requests,
            Duration::from_secs(600),
            100,
        )
        .run()?;
        check("memory run", &r)?;
        let end = bridge.rss_kb().unwrap_or(0);
        let growth = (end as f64 - warm as f64) / warm.max(1) as f64 * 100.0;
        println!(
            "\nmemory: bridge RSS {warm} KiB after warm-up, {end} KiB after {} more requests ({growth:+.1}%)",
            r.ok
        );
        memory_json = json!({"requests": r.ok, "rss_start_kb": warm, "rss_end_kb": end, "growth_pct": growth});
    }
    println!(
        "{}",
        json!({"bench": "relay", "latency": latency_json, "throughput": throughput_json, "cpu_s_per_100k": cpu_json, "scraped": scrape_json, "memory": memory_json})
    );
    drop(curve_parts);
    Ok(())
}

/// A benchmark run that lost or mixed up requests measured nothing.
fn check(name: &str, r: &LoadReport) -> anyhow::Result<()> {
    if r.lost > 0 || r.mismatched > 0 || !r.errors.is_empty() {
        anyhow::bail!(
            "{name}: {} lost, {} mismatched, errors {:?}: the figures would be wrong",
            r.lost,
            r.mismatched,
            r.errors
        );
    }
    Ok(())
}

fn failover(rate: f64) -> anyhow::Result<()> {
    let exe = std::env::current_exe()?;
    println!("zbridge bench failover: a pair on loopback, two clients at {rate} requests/s each:");
    println!("one knows both bridges, one only the primary port; each retries on no answer.\n");
    println!(
        "{:<16} {:>11} {:>10} {:>10} {:>13} {:>13} {:>6}",
        "fault", "timings", "detect ms", "serve ms", "gap ms (1 ep)", "gap ms (2 ep)", "lost"
    );
    let mut rows = Vec::new();
    let mut legacy_gap = None;
    for (timings, interval, timeout) in [("1.0 s / 3.0 s", 1000, 3000), ("0.1 s / 0.3 s", 100, 300)]
    {
        for fault in [Fault::Kill, Fault::Stop, Fault::Term] {
            let interval = Duration::from_millis(interval);
            let timeout = Duration::from_millis(timeout);
            let scenario = Failover {
                fault,
                heartbeat_interval: interval,
                heartbeat_timeout: timeout,
                rate,
                before: Duration::from_secs(1),
                after: timeout * 2 + Duration::from_secs(2),
                stopped_for: timeout * 2,
                extra_flags: Vec::new(),
            };
            let r = scenario.run(&exe, &mut |_| {})?;
            let ms = |d: Option<Duration>| d.map_or("-".to_string(), |d| d.as_millis().to_string());
            let lost = r.primary_only.lost + r.both.lost;
            if fault == Fault::Kill && timeout == Duration::from_secs(3) {
                legacy_gap = Some(r.primary_only.max_wait);
            }
            println!(
                "{:<16} {:>11} {:>10} {:>10} {:>13} {:>13} {:>6}",
                fault.name(),
                timings,
                ms(r.detection),
                ms(r.takeover),
                r.primary_only.max_wait.as_millis(),
                r.both.max_wait.as_millis(),
                lost
            );
            rows.push(json!({
                "fault": fault.name(),
                "heartbeat_interval_ms": interval.as_millis() as u64,
                "heartbeat_timeout_ms": timeout.as_millis() as u64,
                "detection_ms": r.detection.map(|d| d.as_secs_f64() * 1e3),
                "takeover_ms": r.takeover.map(|d| d.as_secs_f64() * 1e3),
                "gap_primary_only_ms": r.primary_only.max_wait.as_secs_f64() * 1e3,
                "gap_both_ms": r.both.max_wait.as_secs_f64() * 1e3,
                "sent": r.primary_only.sent + r.both.sent,
                "lost": lost,
            }));
        }
    }
    println!("\ndetect: the fault until the passive acts (takes the port, or finds it held);");
    println!("serve: the fault until the passive holds the primary port (SIGSTOP: it never does, by design);");
    println!("gap: the longest a request waited for its answer, for a client of 1 or 2 endpoints.");
    // The agents that exist: one endpoint, the primary port, retrying on
    // their own timeout. Figures of the others measured the same way
    // (docs/PERFORMANCE.md): the original single bridge 3.26 s, zguide's
    // Binary Star (bstarsrv/bstarcli) 2.26 s.
    if let Some(gap) = legacy_gap {
        println!(
            "\nkill -9 at the default 1 s / 3 s, a legacy client that knows only the primary port: gap {} ms \
             (goal <= 250 ms; the original bridge: 3260 ms; zguide Binary Star: 2260 ms)",
            gap.as_millis()
        );
    }
    println!(
        "{}",
        json!({"bench": "failover", "rows": rows,
               "legacy_gap_kill_default_ms": legacy_gap.map(|g| g.as_secs_f64() * 1e3)})
    );
    Ok(())
}

fn sustained(
    rate: f64,
    clients: usize,
    in_flight: usize,
    duration: f64,
    payload_bytes: usize,
    json_path: bool,
) -> anyhow::Result<()> {
    let exe = std::env::current_exe()?;
    let duration = Duration::try_from_secs_f64(duration).context("--duration")?;
    let pair = crate::LoopbackPair::new(Duration::from_secs(1), Duration::from_secs(3))?;
    let bridges = ["active", "passive"].map(|mode| BridgeProcess::spawn(&exe, &pair.flags(mode)));
    let [primary, secondary] = bridges;
    let bridges = [primary?, secondary?];
    let rss = || {
        bridges
            .iter()
            .map(|b| b.rss_kb().unwrap_or(0))
            .collect::<Vec<_>>()
    };
    let rss_start = rss();
    println!(
        "zbridge bench load: a pair on loopback, {clients} clients x {in_flight} in flight, {rate} requests/s, {} s, {payload_bytes} B {}",
        duration.as_secs_f64(),
        if json_path { "JSON" } else { "multipart" }
    );
    let mut r = Load {
        endpoint: pair.endpoints().join(","),
        targets: vec!["pc2".into()],
        path: if json_path {
            Route::Json
        } else {
            Route::Multipart
        },
        clients: clients.max(1),
        in_flight: in_flight.max(1),
        requests: u64::MAX,
        duration,
        payload_bytes,
        settle: Duration::from_secs(5),
        tagged: false,
        rate: Some(rate),
        curve: None,
    }
    .run()?;
    let rss_end = rss();
    let (p50, p99, p999) = (
        r.quantile_ms(0.5),
        r.quantile_ms(0.99),
        r.quantile_ms(0.999),
    );
    println!(
        "sent {}, answered {}, lost {}, mixed up {}, errors {:?}",
        r.sent, r.ok, r.lost, r.mismatched, r.errors
    );
    println!(
        "throughput {:.0} requests/s; latency p50 {p50:.3} ms, p99 {p99:.3} ms, p999 {p999:.3} ms",
        r.throughput()
    );
    println!("bridge RSS (primary, secondary): {rss_start:?} KiB at start, {rss_end:?} KiB at end");
    println!(
        "{}",
        json!({"bench": "load", "sent": r.sent, "ok": r.ok, "lost": r.lost, "mismatched": r.mismatched,
            "errors": r.errors, "rps": r.throughput(), "p50_ms": p50, "p99_ms": p99, "p999_ms": p999,
            "rss_start_kb": rss_start, "rss_end_kb": rss_end})
    );
    Ok(())
}

/// `bench client` against a pair someone else runs.
fn client_load(load: &ClientLoad, settings: zbridge_client::ClientConfig) -> anyhow::Result<()> {
    println!(
        "zbridge bench client: {} -> {}, {} calls/s, {} in flight, {} s",
        settings.endpoints.join(","),
        load.target,
        load.rate.map_or("max".to_string(), |r| r.to_string()),
        load.in_flight,
        load.duration.as_secs_f64()
    );
    let client = zbridge_client::Client::connect(settings)?;
    let mut report = load.run(&client);
    println!("{}", report.json());
    Ok(())
}

/// `bench client --local-pair`: throughput of the client beside a raw
/// DEALER through the same bridge, then the active killed (-9) under load,
/// then, on a new pair, the active stopped (SIGSTOP: silent, its
/// connections open, as a host that hangs or whose link is cut).
fn client_pair(load: &ClientLoad) -> anyhow::Result<()> {
    println!("zbridge bench client --local-pair: heartbeat 100/300 ms, client heartbeat_timeout 300 ms, request_timeout 1 s");
    let throughput = client_throughput(load)?;
    let mut killed = client_failover(load, "KILL")?;
    let mut stopped = client_failover(load, "STOP")?;
    let mut line = killed.json();
    line["throughput_ratio_vs_raw_dealer"] = json!(throughput);
    line["sigstop"] = stopped.json();
    println!("{line}");
    Ok(())
}

/// A pair on loopback with heartbeat 100/300 ms, and client settings for
/// it (the same heartbeat_timeout: how long a call waits on a silent bridge).
fn local_pair() -> anyhow::Result<(LoopbackPair, zbridge_client::ClientConfig)> {
    let heartbeat_timeout = Duration::from_millis(300);
    let pair = LoopbackPair::new(Duration::from_millis(100), heartbeat_timeout)?;
    let mut settings = zbridge_client::ClientConfig::local();
    settings.endpoints = pair.endpoints();
    settings.heartbeat_endpoints = pair.heartbeat_endpoints();
    settings.heartbeat_timeout = heartbeat_timeout;
    settings.request_timeout = Duration::from_secs(1);
    settings.reconnect_delay = Duration::from_millis(100);
    settings.hold_down = Duration::from_secs(1);
    Ok((pair, settings))
}

/// Calls/s of one client with 64 in flight over requests/s of one raw
/// DEALER with 64 in flight, through the same bridge: the median of the
/// ratios of 5 rounds of 2 s in which the two take turns, so that a slow
/// spell of the machine hits both sides of a ratio alike. Beside them, a
/// raw DEALER owned by a thread of its own (what any client that lets
/// several threads call costs before it does anything), and the CPU the
/// client's I/O thread spends per call.
fn client_throughput(load: &ClientLoad) -> anyhow::Result<f64> {
    let exe = std::env::current_exe()?;
    let (pair, settings) = local_pair()?;
    let _active = BridgeProcess::spawn(&exe, &pair.flags("active"))?;
    let _passive = BridgeProcess::spawn(&exe, &pair.flags("passive"))?;
    let client = zbridge_client::Client::connect(settings)?;
    let endpoint = &pair.endpoints()[0];
    let round_time = Duration::from_secs(2);
    let (mut ratios, mut behind_ratios, mut cpu_per_call) = (Vec::new(), Vec::new(), Vec::new());
    for round in 1..=5 {
        let raw = Load {
            endpoint: endpoint.clone(),
            targets: vec![load.target.clone()],
            path: Route::Multipart,
            clients: 1,
            in_flight: 64,
            requests: u64::MAX,
            duration: round_time,
            payload_bytes: load.payload_bytes,
            settle: Duration::from_secs(5),
            tagged: false,
            rate: None,
            curve: None,
        }
        .run()?;
        // Looked up now: the thread names itself once it runs.
        let io_thread = tasks_named("zbridge-client");
        let cpu_before = cpu_of_tasks(&io_thread);
        let lib = ClientLoad {
            rate: None,
            in_flight: 64,
            duration: round_time,
            ..load.clone()
        }
        .run(&client);
        let io_us = (cpu_of_tasks(&io_thread) - cpu_before) * 1e6 / (lib.load.ok.max(1) as f64);
        let behind = behind_a_thread(endpoint, &load.target, round_time, load.payload_bytes)?;
        let ratio = lib.load.throughput() / raw.throughput();
        println!(
            "round {round}: raw DEALER {:.0} requests/s, client {:.0} calls/s, {ratio:.2}x ({} lost, errors {:?}), \
             its I/O thread {io_us:.1} µs CPU per call; a DEALER behind a thread {behind:.0} requests/s, {:.2}x",
            raw.throughput(),
            lib.load.throughput(),
            lib.load.lost,
            lib.load.errors,
            behind / raw.throughput()
        );
        ratios.push(ratio);
        behind_ratios.push(behind / raw.throughput());
        cpu_per_call.push(io_us);
    }
    let ratio = median(&ratios);
    println!(
        "throughput, 64 in flight: client / raw DEALER = {ratio:.2}x, median of 5 rounds (goal >= 0.9x, issue 22); \
         a DEALER behind a thread {:.2}x; the client's I/O thread {:.1} µs CPU per call",
        median(&behind_ratios),
        median(&cpu_per_call)
    );
    Ok(ratio)
}

/// This process's threads named `name`.
fn tasks_named(name: &str) -> Vec<String> {
    let Ok(dir) = std::fs::read_dir("/proc/self/task") else {
        return Vec::new();
    };
    dir.filter_map(|e| Some(e.ok()?.file_name().to_string_lossy().into_owned()))
        .filter(|t| {
            std::fs::read_to_string(format!("/proc/self/task/{t}/comm"))
                .is_ok_and(|comm| comm.trim() == name)
        })
        .collect()
}

/// CPU seconds of this process's threads `tasks` so far.
fn cpu_of_tasks(tasks: &[String]) -> f64 {
    (tasks.iter())
        .filter_map(|t| crate::process::cpu_seconds(&format!("/proc/self/task/{t}/stat")))
        .sum()
}

/// Requests/s of a caller whose DEALER another thread owns, 64 in flight,
/// through `endpoint` for `duration`: the caller's PAIR, an inproc pipe,
/// `zmq::proxy` on a thread of its own, the DEALER. The floor of any
/// client that lets several threads call: one thread hop each way and
/// nothing else.
fn behind_a_thread(
    endpoint: &str,
    target: &str,
    duration: Duration,
    payload: usize,
) -> anyhow::Result<f64> {
    let mut context = zmq::Context::new();
    let (front, back) = (context.socket(zmq::PAIR)?, context.socket(zmq::DEALER)?);
    let caller = context.socket(zmq::PAIR)?;
    for s in [&front, &back, &caller] {
        s.set_linger(0)?;
    }
    front.bind("inproc://behind-a-thread")?;
    back.connect(endpoint)?;
    caller.connect("inproc://behind-a-thread")?;
    caller.set_rcvtimeo(5_000)?;
    // Returns with ETERM when the context is destroyed.
    let thread = std::thread::spawn(move || zmq::proxy(&front, &back));
    let frame = vec![b'x'; payload];
    let start = std::time::Instant::now();
    let (mut outstanding, mut answered) = (0, 0u64);
    while start.elapsed() < duration {
        while outstanding < 64 {
            caller.send_multipart([target.as_bytes(), &frame[..]], 0)?;
            outstanding += 1;
        }
        let reply = caller.recv_multipart(0)?;
        anyhow::ensure!(
            reply == [&frame[..]],
            "a DEALER behind a thread: not the echo"
        );
        outstanding -= 1;
        answered += 1;
    }
    let rate = answered as f64 / start.elapsed().as_secs_f64();
    while outstanding > 0 && caller.recv_multipart(0).is_ok() {
        outstanding -= 1;
    }
    drop(caller);
    let _ = context.destroy();
    let _ = thread.join();
    anyhow::ensure!(
        outstanding == 0,
        "a DEALER behind a thread: {outstanding} requests lost"
    );
    Ok(rate)
}

/// `load` through a new client while the active gets `signal` a third of
/// the way in; the longest call is the gap a caller saw.
fn client_failover(load: &ClientLoad, signal: &str) -> anyhow::Result<ClientLoadReport> {
    let exe = std::env::current_exe()?;
    let (pair, settings) = local_pair()?;
    let active = BridgeProcess::spawn(&exe, &pair.flags("active"))?;
    let passive = BridgeProcess::spawn(&exe, &pair.flags("passive"))?;
    let client = zbridge_client::Client::connect(settings)?;
    let runner = {
        let load = load.clone();
        std::thread::spawn(move || load.run(&client))
    };
    std::thread::sleep(load.duration / 3);
    active.signal(signal)?;
    let at = std::time::Instant::now();
    let takeover = passive
        .wait_for_event(load.duration, |e| {
            e["event"] == "role" && e["to"] == "active"
        })
        .map(|(t, _)| t.saturating_duration_since(at));
    let report = runner
        .join()
        .map_err(|_| anyhow::anyhow!("the client load panicked"))?;
    println!(
        "SIG{signal} to the active at {:.1} s: takeover after {}; client: {} sent, {} ok, {} lost, errors {:?}, longest call {:.1} ms, {} failovers, {} switch-backs",
        (load.duration / 3).as_secs_f64(),
        takeover.map_or(
            "none (on one host a stopped active keeps the primary port: docs/HA.md)".to_string(),
            |t| format!("{:.0} ms", t.as_secs_f64() * 1e3)
        ),
        report.load.sent,
        report.load.ok,
        report.load.lost,
        report.load.errors,
        report.max_wait().as_secs_f64() * 1e3,
        report.failovers,
        report.switch_backs
    );
    Ok(report)
}
