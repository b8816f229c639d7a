//! `zbridge run` and `zbridge check-config`: config to a running relay.

use crate::config::{ConfigError, File, LogFormat, LogLevel, Mode, Overrides};
use crate::relay::Relay;
use crate::stop::Stop;
use std::io::Write;
use std::path::Path;

pub fn run(mode: Option<Mode>, path: Option<&Path>, overrides: &Overrides) -> anyhow::Result<()> {
    let mut file = File::load(path)?.with_overrides(overrides);
    if mode.is_some() {
        file.mode = mode;
    }
    let config = file.validate()?;
    config.mode.ok_or_else(|| {
        ConfigError::new(
            "mode",
            "not set: pass --mode active (the primary instance: it listens for its peer, then takes primary_port) or --mode passive (the secondary: it serves on secondary_port and takes over primary_port when the active stops)",
        )
    })?;
    init_logging(config.log_format, config.log_level);
    let mut stop = Stop::on_signals()?;
    let relay = Relay::new(config)?;
    // One JSON line on stdout per event (ready, role, bound, released),
    // with the real bound endpoints: what scripts and the test harness wait for.
    let mut out = std::io::stdout();
    relay.run(&mut stop, &mut |event| {
        let _ = writeln!(out, "{event}");
        let _ = out.flush();
    })
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
