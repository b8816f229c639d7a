//! The monitoring server's sockets: hyper's HTTP/1 server on a
//! current-thread tokio runtime that lives on the monitor's own thread (the
//! relay thread never runs any of it), one task per connection.
//!
//! No client can block another or grow the process: a request head is at
//! most [`MAX_HEAD_BYTES`] with [`MAX_HEADERS`] headers (431 past either),
//! and must arrive within [`HEAD_TIMEOUT`] (also the most a keep-alive
//! connection may sit idle); a connection whose answers are not read is
//! dropped once a write has stalled for [`WRITE_STALL`]; at most
//! [`MAX_CONNECTIONS`] are open at once, and one past that is closed at once.
//! Only GET and HEAD are served (405 with `Allow` otherwise); request bodies
//! are never read. Answers go out without Nagle's delay (TCP_NODELAY).
//!
//! Every answer says `X-Content-Type-Options: nosniff`, `Cache-Control:
//! no-store` and a `Content-Security-Policy` that lets the page load only
//! its own files from this server and fetch only from it ([`POLICY`]).
//!
//! The same runtime runs the [`Sampler`] once a second: it reads the
//! snapshot, never the relay, and writes `/history` and `/events`.

use super::history::{self, History, Sampler};
use super::{journal, respond, Records, Shared};
use crate::throttle::LogThrottle;
use anyhow::Context as _;
use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::header::{
    HeaderValue, ACCEPT, ALLOW, CACHE_CONTROL, CONTENT_SECURITY_POLICY, CONTENT_TYPE,
    X_CONTENT_TYPE_OPTIONS,
};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use serde_json::json;
use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Sleep;
use tracing::{debug, warn};

/// Request line and headers together, in bytes.
const MAX_HEAD_BYTES: usize = 8 * 1024;
const MAX_HEADERS: usize = 32;
/// For a whole request head, and for the wait for the next one.
const HEAD_TIMEOUT: Duration = Duration::from_secs(5);
const WRITE_STALL: Duration = Duration::from_secs(5);
const MAX_CONNECTIONS: usize = 64;
/// hyper's read and write buffers, each (its minimum is 8 KiB).
const MAX_BUF_BYTES: usize = 16 * 1024;
const ALLOWED: &str = "GET, HEAD";
/// How often a failing accept is logged at most.
const ACCEPT_LOG_EVERY: Duration = Duration::from_secs(10);
/// What the page may load and fetch: its own files and data, from this
/// server; no inline script or style, no frames, no forms.
const POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";
/// How often the sampler looks at the snapshot (`/history`'s interval).
const SAMPLE_EVERY: Duration = Duration::from_secs(1);

/// Serve on `bind` (`HOST:PORT`, port 0 for any) from a thread; returns the
/// bound port. `/health` says 503 when the snapshot is older than `stale`:
/// the relay loop is stuck. `journal` is where the relay records its
/// events; the sampler adds what it sees change.
pub fn start(
    bind: &str,
    shared: Shared,
    journal: journal::Shared,
    stale: Duration,
) -> anyhow::Result<u16> {
    let listener = std::net::TcpListener::bind(bind)
        .with_context(|| format!("cannot bind the monitoring HTTP server on {bind}"))?;
    listener.set_nonblocking(true)?;
    let port = listener.local_addr()?.port();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .enable_time()
        .build()
        .context("cannot start the monitoring server's runtime")?;
    let listener = {
        let _entered = runtime.enter();
        TcpListener::from_std(listener)?
    };
    std::thread::Builder::new()
        .name("monitor".into())
        .spawn(move || {
            let records = Records {
                history: History::shared(),
                journal,
            };
            runtime.spawn(sample(Arc::clone(&shared), records.clone()));
            runtime.block_on(serve(listener, shared, stale, records))
        })?;
    Ok(port)
}

/// Unix seconds now.
pub fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// Once a second, a sample of the snapshot into the history and what
/// changed into the journal. The snapshot's lock is held only for a clone.
async fn sample(shared: Shared, records: Records) {
    let mut sampler = Sampler::default();
    let mut every = tokio::time::interval(SAMPLE_EVERY);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        every.tick().await;
        let Some(snapshot) = shared.lock().ok().map(|s| s.clone()) else {
            continue;
        };
        let time = unix_now();
        let observed = sampler.observe(snapshot, time);
        history::record(&records.history, &records.journal, time, observed);
    }
}

async fn serve(listener: TcpListener, shared: Shared, stale: Duration, records: Records) {
    let mut http = http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(HEAD_TIMEOUT)
        .max_header_size(MAX_HEAD_BYTES)
        .max_headers(MAX_HEADERS)
        .max_buf_size(MAX_BUF_BYTES);
    let open = Arc::new(AtomicUsize::new(0));
    // A descriptor held in reserve: when the process runs out, it is let
    // go so that the next connection (a health check, most likely) can be
    // accepted and answered, then taken again.
    let mut reserve = std::fs::File::open("/dev/null").ok();
    let mut failures = 0u64;
    let mut log = LogThrottle::default();
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                failures += 1;
                if log.due(std::time::Instant::now(), ACCEPT_LOG_EVERY) {
                    warn!(
                        error = %e, accept_failures_total = failures,
                        "the monitoring server cannot accept a connection (out of file descriptors? raise LimitNOFILE= or ulimit -n)"
                    );
                }
                if reserve.take().is_some() {
                    continue;
                }
                // Give the open connections time to finish instead of
                // spinning.
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        if reserve.is_none() {
            reserve = std::fs::File::open("/dev/null").ok();
        }
        let Some(slot) = Slot::take(&open) else {
            debug!("monitoring connection refused: {MAX_CONNECTIONS} already open");
            continue;
        };
        if let Err(e) = stream.set_nodelay(true) {
            debug!(error = %e, "cannot set TCP_NODELAY on a monitoring connection");
        }
        let shared = Arc::clone(&shared);
        let records = records.clone();
        let service = service_fn(move |request| {
            std::future::ready(Ok::<_, Infallible>(answer(
                &request, &shared, stale, &records,
            )))
        });
        let connection = http.serve_connection(TokioIo::new(WriteDeadline::new(stream)), service);
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                debug!(error = %e, "monitoring connection closed");
            }
            drop(slot);
        });
    }
}

fn answer(
    request: &Request<Incoming>,
    shared: &Shared,
    stale: Duration,
    records: &Records,
) -> Response<Full<Bytes>> {
    let method = request.method();
    if method != Method::GET && method != Method::HEAD {
        let message = format!("method {method} not allowed: use {ALLOWED}");
        let body = json!({"status": "error", "message": message}).to_string();
        let mut response = response(405, "application/json", body);
        response
            .headers_mut()
            .insert(ALLOW, HeaderValue::from_static(ALLOWED));
        return response;
    }
    let snapshot = shared.lock().map(|s| s.clone()).ok();
    let url = request.uri().path_and_query().map_or("/", |p| p.as_str());
    let accept = request.headers().get(ACCEPT).and_then(|v| v.to_str().ok());
    let (code, content_type, body) = respond(url, accept, snapshot, stale, records);
    response(code, content_type, body)
}

fn response(code: u16, content_type: &'static str, body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() =
        StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(CONTENT_SECURITY_POLICY, HeaderValue::from_static(POLICY));
    response
}

/// One of [`MAX_CONNECTIONS`]; given back when dropped.
struct Slot(Arc<AtomicUsize>);

impl Slot {
    fn take(open: &Arc<AtomicUsize>) -> Option<Slot> {
        open.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
            (n < MAX_CONNECTIONS).then_some(n + 1)
        })
        .ok()
        .map(|_| Slot(Arc::clone(open)))
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A connection whose writes fail with `TimedOut` once they have made no
/// progress for [`WRITE_STALL`]: a client that sends requests and never
/// reads the answers is dropped instead of holding its task (and its
/// buffers) for as long as it keeps the connection open. A client that
/// reads, however slowly, resets the clock.
struct WriteDeadline {
    stream: TcpStream,
    stalled: Option<Pin<Box<Sleep>>>,
}

impl WriteDeadline {
    fn new(stream: TcpStream) -> WriteDeadline {
        WriteDeadline {
            stream,
            stalled: None,
        }
    }

    fn watch<T>(&mut self, cx: &mut Context<'_>, poll: Poll<io::Result<T>>) -> Poll<io::Result<T>> {
        if poll.is_ready() {
            self.stalled = None;
            return poll;
        }
        let stalled = self
            .stalled
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(WRITE_STALL)));
        match stalled.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "the client has not read its answers",
            ))),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl AsyncRead for WriteDeadline {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for WriteDeadline {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let poll = Pin::new(&mut this.stream).poll_write(cx, buf);
        this.watch(cx, poll)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let poll = Pin::new(&mut this.stream).poll_write_vectored(cx, bufs);
        this.watch(cx, poll)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let poll = Pin::new(&mut this.stream).poll_flush(cx);
        this.watch(cx, poll)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }
}
