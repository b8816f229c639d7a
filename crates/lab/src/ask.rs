//! One-shot questions to a running bridge: a request on a fresh DEALER,
//! its `/status`, an HTTP GET, the code of an error reply.

use serde_json::Value;
use std::time::Duration;

/// The body of a `200` answer to `GET url` (`http://HOST:PORT/PATH`), or
/// `None`: a plain HTTP/1.0 exchange for the benchmarks and the soak.
pub fn http_get(url: &str, timeout: Duration) -> Option<String> {
    use std::io::{Read, Write};
    let rest = url.strip_prefix("http://")?;
    let (address, path) = rest.split_once('/').map_or((rest, ""), |(a, p)| (a, p));
    let socket = std::net::ToSocketAddrs::to_socket_addrs(address)
        .ok()?
        .next()?;
    let mut stream = std::net::TcpStream::connect_timeout(&socket, timeout).ok()?;
    stream.set_read_timeout(Some(timeout)).ok()?;
    write!(stream, "GET /{path} HTTP/1.0\r\nHost: {address}\r\n\r\n").ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    let (head, body) = response.split_once("\r\n\r\n")?;
    head.split(' ').nth(1).filter(|code| *code == "200")?;
    Some(body.to_string())
}

/// Send one request on a fresh DEALER and wait up to `timeout` for the reply.
pub fn ask(endpoint: &str, frames: &[&[u8]], timeout: Duration) -> Option<Vec<Vec<u8>>> {
    let context = zmq::Context::new();
    let socket = context.socket(zmq::DEALER).ok()?;
    socket.set_linger(0).ok()?;
    socket.connect(endpoint).ok()?;
    socket.send_multipart(frames, 0).ok()?;
    if socket.poll(zmq::POLLIN, timeout.as_millis() as i64).ok()? == 0 {
        return None;
    }
    socket.recv_multipart(0).ok()
}

/// A bridge's status document, asked through its frontend.
pub fn status(endpoint: &str) -> Option<Value> {
    let reply = ask(
        endpoint,
        &[br#"{"action":"status"}"#],
        Duration::from_secs(2),
    )?;
    serde_json::from_slice(reply.last()?).ok()
}

/// The `error` code of a bridge error document.
pub fn error_code(frame: &[u8]) -> Option<String> {
    zbridge_protocol::parse_error_reply(&[frame]).map(|r| r.code.as_str().to_string())
}
