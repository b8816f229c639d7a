//! `zbridge request` and `zbridge status`: one call to a bridge from a terminal.

use anyhow::{bail, Context};
use std::path::Path;
use std::time::Duration;
use zbridge_client::{Client, ClientConfig};

fn seconds(timeout: f64) -> anyhow::Result<Duration> {
    Duration::try_from_secs_f64(timeout)
        .ok()
        .filter(|t| !t.is_zero())
        .context("--timeout must be a positive number of seconds")
}

/// Send `frames` to `endpoint` and wait up to `timeout` seconds for the reply.
fn call(endpoint: &str, frames: &[&[u8]], timeout: f64) -> anyhow::Result<Vec<Vec<u8>>> {
    let timeout = seconds(timeout)?;
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

/// The client settings for the bridges at `endpoints` (or those of the
/// config file, or the local pair); `timeout`, if given, is the seconds each
/// bridge gets to answer (else the config's request_timeout).
pub fn client_config(
    endpoints: &[String],
    config: Option<&Path>,
    timeout: Option<f64>,
) -> anyhow::Result<ClientConfig> {
    let mut client = match config {
        Some(path) => ClientConfig::from_file(path)?,
        None => ClientConfig::local(),
    };
    if !endpoints.is_empty() {
        client.endpoints = endpoints.to_vec();
        if config.is_none() {
            // Heartbeat ports of a guessed pair would be guesses too.
            client.heartbeat_endpoints.clear();
        }
    }
    if let Some(timeout) = timeout {
        client.request_timeout = seconds(timeout)?;
    }
    Ok(client)
}

pub fn request(
    endpoints: &[String],
    config: Option<&Path>,
    target: &str,
    timeout: Option<f64>,
    payload: &str,
) -> anyhow::Result<()> {
    let mut settings = client_config(endpoints, config, timeout)?;
    // One round over the bridges: a person is waiting.
    settings.max_reconnect_attempts = 1;
    let client = Client::connect(settings)?;
    let reply = client.request(target, payload.as_bytes())?;
    for frame in reply.frames {
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
