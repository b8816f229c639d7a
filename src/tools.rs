//! `zbridge request`, `zbridge subscribe` and `zbridge status`: a bridge
//! pair from a terminal.

use anyhow::{anyhow, bail, Context};
use serde_json::json;
use std::path::Path;
use std::time::Duration;
use zbridge::Error;
use zbridge_client::rules::seconds;
use zbridge_client::{Client, ClientConfig, Delivery, Subscriber};

/// Send `frames` to `endpoint` (a CURVE client with `keys`) and wait up to
/// `timeout` seconds for the reply.
fn call(
    endpoint: &str,
    keys: Option<&zbridge_client::curve::ClientKeys>,
    frames: &[&[u8]],
    timeout: f64,
) -> anyhow::Result<Vec<Vec<u8>>> {
    let timeout = seconds("--timeout", timeout)?;
    let context = zmq::Context::new();
    let socket = context.socket(zmq::REQ)?;
    socket.set_linger(0)?;
    socket.set_ipv6(true)?;
    if let Some(keys) = keys {
        keys.apply(&socket)?;
    }
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

pub fn request(
    endpoints: &[String],
    config: Option<&Path>,
    target: &str,
    timeout: Option<f64>,
    payload: &str,
) -> Result<(), Error> {
    let mut settings = ClientConfig::for_tool(endpoints, config, timeout)?;
    // One round over the bridges: a person is waiting.
    settings.max_reconnect_attempts = 1;
    let client = Client::connect(settings)?;
    let reply = client
        .request(target, payload.as_bytes())
        .map_err(anyhow::Error::from)?;
    for frame in reply.frames {
        println!("{}", String::from_utf8_lossy(&frame));
    }
    Ok(())
}

/// The status document of the bridge at `endpoint`, else at the first
/// endpoint of `config` (with its CURVE keys), else at 5600 on loopback.
pub fn status(endpoint: Option<&str>, config: Option<&Path>, timeout: f64) -> Result<(), Error> {
    let settings = config
        .map(|path| ClientConfig::for_tool(&[], Some(path), None))
        .transpose()?;
    let endpoint = endpoint
        .or_else(|| {
            settings
                .as_ref()
                .and_then(|s| s.endpoints.first().map(String::as_str))
        })
        .unwrap_or("tcp://127.0.0.1:5600");
    let keys = settings.as_ref().and_then(|s| s.curve.as_ref());
    let reply = call(endpoint, keys, &[br#"{"action":"status"}"#], timeout)?;
    let doc: serde_json::Value = match reply.as_slice() {
        [only] => serde_json::from_slice(only).context("the status reply is not JSON")?,
        _ => return Err(anyhow!("the status reply has {} frames, expected 1", reply.len()).into()),
    };
    println!("{doc:#}");
    Ok(())
}

/// When `zbridge subscribe` stops (never, if neither is given).
pub struct Until {
    pub count: Option<u64>,
    pub seconds: Option<f64>,
}

pub fn subscribe(
    config: Option<&Path>,
    endpoints: &[String],
    stream: Option<&str>,
    topics: &[String],
    until: Until,
    json: bool,
) -> Result<(), Error> {
    let mut settings = match config {
        Some(path) => ClientConfig::from_file(path)?,
        None => ClientConfig::local(),
    };
    if !endpoints.is_empty() {
        settings.pub_endpoints = endpoints.to_vec();
    }
    if let (Some(path), Some(stream)) = (config, stream) {
        let file = zbridge::config::File::load(Some(path))?;
        if !file.streams.contains_key(stream) {
            let known: Vec<&str> = file.streams.keys().map(String::as_str).collect();
            return Err(zbridge::config::ConfigError::new(
                "streams",
                format!(
                    "no stream `{stream}` in {}; it has: {}",
                    path.display(),
                    if known.is_empty() {
                        "none".to_string()
                    } else {
                        known.join(", ")
                    }
                ),
            )
            .into());
        }
    }
    let deadline = match until.seconds {
        Some(s) => Some(std::time::Instant::now() + seconds("--seconds", s)?),
        None => None,
    };
    let topics: Vec<Vec<u8>> = topics.iter().map(|t| t.as_bytes().to_vec()).collect();
    let mut subscriber = Subscriber::connect(&settings, stream, &topics)?;
    let mut received = 0;
    while until.count.is_none_or(|n| received < n) {
        let wait = match deadline {
            Some(d) => d.saturating_duration_since(std::time::Instant::now()),
            None => Duration::from_secs(1),
        };
        if wait.is_zero() {
            break;
        }
        let Some(delivery) = subscriber.recv(wait)? else {
            continue;
        };
        let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
        let line = match (&delivery, json) {
            (Delivery::Message(m), true) => json!({
                "stream": m.stream, "prefix": text(&m.prefix), "seq": m.seq,
                "source": format!("{:016x}", m.source),
                "frames": m.frames.iter().map(|f| text(f)).collect::<Vec<_>>(),
                "last_value": m.last_value,
            })
            .to_string(),
            (Delivery::Message(m), false) => {
                let frames: Vec<String> = m.frames.iter().map(|f| text(f)).collect();
                // A last value is the topic's state as the bridge kept
                // it, not a new message: no number of its own.
                let number = if m.last_value {
                    "(last value)".to_string()
                } else {
                    format!("#{}", m.seq)
                };
                format!("{} {number} {}", m.stream, frames.join(" | "))
            }
            (
                Delivery::Gap {
                    stream,
                    prefix,
                    missed,
                },
                true,
            ) => json!({"gap": missed, "stream": stream, "prefix": text(prefix)}).to_string(),
            (
                Delivery::Gap {
                    stream,
                    prefix,
                    missed,
                },
                false,
            ) => format!(
                "-- {stream}: {} messages under {:?} were lost",
                missed.map_or("an unknown number of".to_string(), |n| n.to_string()),
                text(prefix)
            ),
            (
                Delivery::Moved {
                    stream,
                    prefix,
                    from,
                    to,
                },
                true,
            ) => json!({
                "moved": {"from": format!("{from:016x}"), "to": format!("{to:016x}")},
                "stream": stream, "prefix": text(prefix),
            })
            .to_string(),
            (Delivery::Moved { stream, .. }, false) => {
                format!("-- {stream}: now from the other bridge")
            }
        };
        println!("{line}");
        if matches!(delivery, Delivery::Message(_)) {
            received += 1;
        }
    }
    Ok(())
}
