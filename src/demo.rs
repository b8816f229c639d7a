//! `zbridge demo`: the first thing a newcomer runs. On loopback, with ports
//! the OS picks: a bridge process, two demo services (`main_pc`, `pc2`) and a
//! client load; prints what happened, cleans up every process, exits 0.

use crate::lab::{error_code, lone_bridge_flags, BridgeProcess, EchoService, Load, Route};
use std::time::Duration;

pub fn run(seconds: u64) -> anyhow::Result<()> {
    let main_pc = EchoService::start(Some("main_pc"))?;
    let pc2 = EchoService::start(Some("pc2"))?;
    let exe = std::env::current_exe()?;
    let mut flags = lone_bridge_flags();
    flags.extend([
        format!("--main-pc-addr={}", main_pc.endpoint),
        format!("--pc2-addr={}", pc2.endpoint),
        "--log-level=warn".into(),
    ]);
    let bridge = BridgeProcess::spawn(&exe, &flags)?;
    println!("zbridge demo: one bridge, two services, a client load, all on loopback\n");
    println!("  bridge   {}  (pid {})", bridge.frontend, bridge.pid());
    println!("  main_pc  {}  (a demo echo service)", main_pc.endpoint);
    println!("  pc2      {}  (a demo echo service)\n", pc2.endpoint);

    // One request of each kind, as an agent would send it.
    let context = zmq::Context::new();
    let req = context.socket(zmq::REQ)?;
    req.set_linger(0)?;
    req.set_rcvtimeo(5000)?;
    req.connect(&bridge.frontend)?;
    for (what, frames) in [
        (
            "JSON request",
            vec![br#"{"target":"pc2","text":"hello"}"#.to_vec()],
        ),
        (
            "multipart request",
            vec![b"main_pc".to_vec(), b"hello".to_vec()],
        ),
        ("unknown target", vec![br#"{"target":"pc3"}"#.to_vec()]),
        ("not JSON", vec![b"hello?".to_vec()]),
        ("bridge ping", vec![br#"{"action":"ping"}"#.to_vec()]),
    ] {
        req.send_multipart(&frames, 0)?;
        let reply = req.recv_multipart(0)?;
        let shown: Vec<String> = reply
            .iter()
            .map(|f| String::from_utf8_lossy(f).into_owned())
            .collect();
        let sent: Vec<String> = frames
            .iter()
            .map(|f| String::from_utf8_lossy(f).into_owned())
            .collect();
        println!("  {what:<18} {sent:?}\n  {:<18} -> {shown:?}", "");
    }

    let clients = 4;
    let in_flight = 8;
    println!("\nload: {clients} DEALER clients x {in_flight} in flight, JSON requests to main_pc and pc2, {seconds} s");
    let mut report = Load {
        endpoint: bridge.frontend.clone(),
        targets: vec!["main_pc".into(), "pc2".into()],
        path: Route::Json,
        clients,
        in_flight,
        requests: u64::MAX,
        duration: Duration::from_secs(seconds),
        payload_bytes: 100,
        settle: Duration::from_secs(5),
        tagged: true,
    }
    .run()?;
    println!("  second    answered/s   errors");
    for (i, (ok, errors)) in report.timeline.iter().enumerate() {
        println!("  {:>6} {ok:>13} {errors:>8}", i + 1);
    }
    println!(
        "\n  sent {}, answered {}, errors {}, lost {}, mixed up {}",
        report.sent,
        report.ok,
        report.errors.values().sum::<u64>(),
        report.lost,
        report.mismatched
    );
    println!(
        "  latency p50 {:.3} ms, p99 {:.3} ms, {:.0} requests/s",
        report.quantile_ms(0.5),
        report.quantile_ms(0.99),
        report.throughput()
    );

    req.send(&br#"{"action":"status"}"#[..], 0)?;
    let status: serde_json::Value = serde_json::from_slice(&req.recv_bytes(0)?)?;
    if let Some(code) = error_code(status.to_string().as_bytes()) {
        anyhow::bail!("the bridge refused the status action: {code}");
    }
    println!(
        "\nbridge status: role {}, {} requests, {} replies relayed, targets {}",
        status["role"], status["requests_total"], status["replies_total"], status["targets"]
    );
    println!("\nTry it yourself: zbridge run --mode active, then zbridge status.");
    if report.lost > 0 || report.mismatched > 0 {
        anyhow::bail!("requests were lost or mixed up: this is a bug, please report it");
    }
    Ok(())
}
