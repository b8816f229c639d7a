//! The command line: `zbridge run | check-config | keygen | request | subscribe | status | bench | demo | completions`.

use clap::{Parser, Subcommand};
use std::path::PathBuf;
use zbridge::config::{Mode, Overrides};

#[derive(Debug, Parser)]
#[command(
    name = "zbridge",
    version,
    about = "A redundant ZeroMQ request/reply bridge"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run a bridge instance.
    #[command(args_override_self = true)]
    Run {
        /// Starting role: `active` binds primary_port, `passive` secondary_port.
        #[arg(long, value_enum)]
        mode: Option<Mode>,
        /// TOML config file (every key has a default).
        #[arg(long)]
        config: Option<PathBuf>,
        #[command(flatten)]
        overrides: Box<Overrides>,
    },
    /// Validate a config file and print the effective config (exit 2 if bad).
    #[command(args_override_self = true)]
    CheckConfig {
        /// The TOML config file to check.
        file: PathBuf,
        #[command(flatten)]
        overrides: Box<Overrides>,
    },
    /// Send one request through a bridge pair (zbridge-client: fails over
    /// to the next endpoint) and print the reply frames.
    Request {
        /// Bridge frontends in priority order, comma-separated (default:
        /// from --config, else tcp://127.0.0.1:5600,tcp://127.0.0.1:5601).
        #[arg(long, alias = "endpoints", value_delimiter = ',')]
        endpoint: Vec<String>,
        /// The bridge config file; its [client] section, if any, applies.
        #[arg(long)]
        config: Option<PathBuf>,
        /// Target name, e.g. pc2.
        #[arg(long)]
        target: String,
        /// Seconds each bridge gets to answer (default: the config's
        /// client request_timeout: the bridge's request_timeout + 1 s).
        #[arg(long)]
        timeout: Option<f64>,
        /// The payload, sent as one frame after the target frame.
        payload: String,
    },
    /// Subscribe to a stream through the bridge pair (zbridge-client: both
    /// bridges at once, survives a failover) and print what arrives.
    Subscribe {
        /// The bridge config file: pub ports, hosts and stream names.
        #[arg(long)]
        config: Option<PathBuf>,
        /// Pub endpoints, comma-separated (default: from --config, else
        /// tcp://127.0.0.1:5630,tcp://127.0.0.1:5631).
        #[arg(long, alias = "endpoint", value_delimiter = ',')]
        endpoints: Vec<String>,
        /// Stream name (default: every stream on the pub ports).
        #[arg(long)]
        stream: Option<String>,
        /// Topic prefix; repeat for several (default: everything).
        #[arg(long)]
        topic: Vec<String>,
        /// Exit after this many messages.
        #[arg(long)]
        count: Option<u64>,
        /// Exit after this many seconds.
        #[arg(long)]
        seconds: Option<f64>,
        /// One JSON object per line instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Write a CURVE key pair: PATH holds the secret key (Z85, mode 0600),
    /// PATH.pub the public key (also printed). Never overwrites a file.
    Keygen {
        /// Where to write the secret key; the public key goes to PATH.pub.
        path: PathBuf,
    },
    /// Ask a bridge for its status document.
    Status {
        /// The bridge's frontend (default: the first endpoint of --config,
        /// else tcp://127.0.0.1:5600).
        #[arg(long, value_name = "ENDPOINT")]
        endpoint: Option<String>,
        /// The bridge config file: its endpoints and, with CURVE, the keys.
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
        /// Seconds to wait for the answer.
        #[arg(long, default_value_t = 3.0, value_name = "SECONDS")]
        timeout: f64,
    },
    /// Measure the bridge against libzmq's proxy and a direct connection.
    Bench {
        #[command(subcommand)]
        what: zbridge_lab::bench::What,
    },
    /// Run a pair of bridges, two demo services and a client load on
    /// loopback, and kill the active mid-run.
    Demo {
        /// Seconds of load (the kill comes after a third of them).
        #[arg(long, default_value_t = 6)]
        seconds: u64,
    },
    /// Print the shell completion script for SHELL (the Debian package
    /// installs those for bash, zsh and fish).
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Write the man pages (zbridge.1, zbridge-run.1, ...) into DIR: for
    /// the packages (scripts/dist).
    #[command(hide = true)]
    Manpages { dir: PathBuf },
}
