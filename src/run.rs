//! `zbridge run` and `zbridge check-config`: config to a running relay.

use crate::config::{ConfigError, File, LogFormat, LogLevel, Mode, Overrides};
use crate::relay::Relay;
use crate::stop::Stop;
use serde_json::json;
use std::io::Write;
use std::path::Path;
use tracing::info;

pub fn run(mode: Option<Mode>, path: Option<&Path>, overrides: &Overrides) -> anyhow::Result<()> {
    let mut file = File::load(path)?.with_overrides(overrides);
    if mode.is_some() {
        file.mode = mode;
    }
    let config = file.validate()?;
    let mode = config.mode.ok_or_else(|| {
        ConfigError::new(
            "mode",
            "not set: pass --mode active (binds primary_port) or --mode passive (binds secondary_port)",
        )
    })?;
    init_logging(config.log_format, config.log_level);
    let mut stop = Stop::on_signals()?;
    let frontend_host = config.bind_host.clone();
    let relay = Relay::bind(config, mode)?;
    let frontend = crate::config::tcp_endpoint(&frontend_host, relay.frontend_port());
    let targets = relay.targets();
    for t in &targets {
        info!(target_name = %t.name, endpoint = %t.endpoint, connected = t.connected, "target");
    }
    info!(
        version = env!("CARGO_PKG_VERSION"),
        role = ?mode,
        %frontend,
        pid = std::process::id(),
        "zbridge ready"
    );
    // One JSON line on stdout with the real bound endpoints: what scripts
    // and the test harness wait for.
    let ready = json!({
        "event": "ready",
        "version": env!("CARGO_PKG_VERSION"),
        "pid": std::process::id(),
        "role": match mode { Mode::Active => "active", Mode::Passive => "passive" },
        "frontend": frontend,
        "targets": targets.iter().map(|t| (t.name.clone(), json!({"endpoint": t.endpoint, "connected": t.connected}))).collect::<serde_json::Map<_, _>>(),
    });
    let mut out = std::io::stdout().lock();
    writeln!(out, "{ready}")?;
    out.flush()?;
    drop(out);
    relay.run(&mut stop)
}

pub fn check_config(path: &Path, overrides: &Overrides) -> anyhow::Result<()> {
    let file = File::load(Some(path))?.with_overrides(overrides);
    let config = file.validate()?;
    print!("{}", file.to_toml());
    println!("# {}: valid; targets:", path.display());
    for t in &config.targets {
        println!(
            "#   {} -> {} (request_timeout {} s)",
            t.name,
            t.endpoint,
            t.request_timeout.as_secs_f64()
        );
    }
    Ok(())
}

fn init_logging(format: LogFormat, level: LogLevel) {
    let level = match level {
        LogLevel::Error => tracing::Level::ERROR,
        LogLevel::Warn => tracing::Level::WARN,
        LogLevel::Info => tracing::Level::INFO,
        LogLevel::Debug => tracing::Level::DEBUG,
        LogLevel::Trace => tracing::Level::TRACE,
    };
    let builder = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_max_level(level);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().flatten_event(true).init(),
    }
}
