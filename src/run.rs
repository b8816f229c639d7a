//! `zbridge run` and `zbridge check-config`: config to a running relay.

use crate::config::{ConfigError, File, LogFormat, LogLevel, Mode, Overrides, Source};
use crate::relay::Relay;
use crate::stop::Stop;
use crate::Error;
use std::io::{IsTerminal, Write};
use std::path::Path;
use tracing_subscriber::filter::LevelFilter;
use tracing_subscriber::prelude::*;
use tracing_subscriber::{fmt, reload, Registry};

pub fn run(mode: Option<Mode>, path: Option<&Path>, overrides: &Overrides) -> Result<(), Error> {
    let source = Source {
        path: path.map(Path::to_path_buf),
        overrides: overrides.clone(),
        mode,
    };
    let config = source.load()?;
    config.mode.ok_or_else(|| {
        ConfigError::new(
            "mode",
            "not set: pass --mode active (the primary instance: it listens for its peer, then takes primary_port) or --mode passive (the secondary: it serves on secondary_port and takes over primary_port when the active stops)",
        )
    })?;
    let level = init_logging(config.log_format, config.log_level);
    crate::limits::raise_descriptors();
    if let Some(clients) = &config.curve_clients {
        clients.log_refused();
    }
    let mut stop = Stop::on_signals()?;
    let set_level = Box::new(move |l: LogLevel| {
        let _ = level.modify(|filter| *filter = level_filter(l));
    });
    let relay = Relay::new(config, source, set_level)?;
    // One JSON line on stdout per event (ready, role, bound, released, ...),
    // with the real bound endpoints: what scripts and the test harness wait for.
    let mut out = std::io::stdout();
    relay.run(&mut stop, &mut |event| {
        let _ = writeln!(out, "{event}");
        let _ = out.flush();
    })?;
    Ok(())
}

pub fn check_config(path: &Path, overrides: &Overrides) -> Result<(), Error> {
    let file = File::load(Some(path))?.with_overrides(overrides);
    let config = file.validate()?;
    print!("{}", file.to_toml());
    println!("# {}: valid; targets:", path.display());
    for t in &config.targets {
        println!(
            "#   {} -> {} (request_timeout {} s{})",
            t.name,
            t.endpoint,
            t.request_timeout.as_secs_f64(),
            if t.curve_server_key.is_some() {
                ", CURVE"
            } else {
                ""
            }
        );
    }
    // Public keys and counts only: the secret is never printed.
    if let Some(pair) = &config.curve {
        println!("# CURVE on: the pair's public key is {}", pair.public);
        match &config.curve_clients {
            Some(clients) => println!(
                "#   {} client key(s) admitted from {}{}",
                clients.keys.len(),
                clients.dir.display(),
                if clients.keys.is_empty() {
                    " (no *.pub file there: every client is refused, only the pair's own key is admitted)"
                } else {
                    ""
                }
            ),
            None => {
                println!("#   no curve_clients: any client that knows the public key is admitted")
            }
        }
    }
    // A refused key file: the bridge runs without its key (and logs it);
    // check-config, run before a deploy, fails so that it is fixed.
    let refused = config
        .curve_clients
        .as_ref()
        .map_or(&[][..], |c| c.refused.as_slice());
    if !refused.is_empty() {
        for e in refused {
            eprintln!("zbridge: {e}");
        }
        return Err(ConfigError::new(
            "curve_clients",
            format!(
                "{} *.pub file(s) refused (above): a running bridge admits the other keys and logs these; fix or remove them",
                refused.len()
            ),
        )
        .into());
    }
    if !config.streams.is_empty() {
        println!(
            "# streams (republished on pub port {} while active, {} while passive):",
            config.primary_pub_port, config.secondary_pub_port
        );
    }
    for s in &config.streams {
        println!("#   {} <- {}", s.name, s.endpoint);
    }
    Ok(())
}

fn level_filter(level: LogLevel) -> LevelFilter {
    match level {
        LogLevel::Error => LevelFilter::ERROR,
        LogLevel::Warn => LevelFilter::WARN,
        LogLevel::Info => LevelFilter::INFO,
        LogLevel::Debug => LevelFilter::DEBUG,
        LogLevel::Trace => LevelFilter::TRACE,
    }
}

/// Log to stderr; the returned handle changes the level at run time.
fn init_logging(format: LogFormat, level: LogLevel) -> reload::Handle<LevelFilter, Registry> {
    let (filter, handle) = reload::Layer::new(level_filter(level));
    // Colours only on a terminal, never in a file or the journal.
    let layer = fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    let layer = match format {
        LogFormat::Text => layer.boxed(),
        LogFormat::Json => layer.json().flatten_event(true).boxed(),
    };
    tracing_subscriber::registry()
        .with(filter)
        .with(layer)
        .init();
    handle
}
