//! `zbridge request` and `zbridge status`: one call to a bridge from a terminal.

use anyhow::{bail, Context};
use std::time::Duration;

/// Send `frames` to `endpoint` and wait up to `timeout` seconds for the reply.
fn call(endpoint: &str, frames: &[&[u8]], timeout: f64) -> anyhow::Result<Vec<Vec<u8>>> {
    let timeout = Duration::try_from_secs_f64(timeout)
        .ok()
        .filter(|t| !t.is_zero())
        .context("--timeout must be a positive number of seconds")?;
    let context = zmq::Context::new();
    let socket = context.socket(zmq::REQ)?;
    socket.set_linger(0)?;
    socket.set_ipv6(true)?;
    socket
        .connect(endpoint)
        .with_context(|| format!("bad endpoint {endpoint:?}: expected tcp://HOST:PORT"))?;
    socket.send_multipart(frames, 0)?;
    if socket.poll(zmq::POLLIN, timeout.as_millis() as i64)? == 0 {
        bail!(
            "no answer from {endpoint} within {:.1} s: is a bridge running there? (zbridge run --mode active)",
            timeout.as_secs_f64()
        );
    }
    Ok(socket.recv_multipart(0)?)
}

/// The bridge's error document, if `reply` is one.
fn bridge_error(reply: &[Vec<u8>]) -> Option<(String, String)> {
    let [only] = reply else { return None };
    let doc: serde_json::Value = serde_json::from_slice(only).ok()?;
    if doc.get("status")?.as_str()? != "error" {
        return None;
    }
    let code = doc.get("error")?.as_str()?.to_string();
    let message = doc.get("message").and_then(|m| m.as_str()).unwrap_or("");
    Some((code, message.to_string()))
}

pub fn request(endpoint: &str, target: &str, timeout: f64, payload: &str) -> anyhow::Result<()> {
    let reply = call(endpoint, &[target.as_bytes(), payload.as_bytes()], timeout)?;
    if let Some((code, message)) = bridge_error(&reply) {
        bail!("the bridge answered {code}: {message}");
    }
    for frame in reply {
        println!("{}", String::from_utf8_lossy(&frame));
    }
    Ok(())
}

pub fn status(endpoint: &str, timeout: f64) -> anyhow::Result<()> {
    let reply = call(endpoint, &[br#"{"action":"status"}"#], timeout)?;
    let doc: serde_json::Value = match reply.as_slice() {
        [only] => serde_json::from_slice(only).context("the status reply is not JSON")?,
        _ => bail!("the status reply has {} frames, expected 1", reply.len()),
    };
    println!("{}", serde_json::to_string_pretty(&doc)?);
    Ok(())
}
