//! Hosts out of network namespaces that a test makes and deletes: each
//! namespace is a machine, veth pairs are its cables, with addresses only
//! inside them (10.231.x.y). Needs root (CI runs as root).

use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

/// Run `ip ARGS...`; panics with its error if it fails.
pub fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("run ip");
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Namespaces `zbridge-TAG-ID`, one per tag, each with its loopback up;
/// deleted (with the veth ends inside them) when dropped.
pub struct Namespaces {
    pub names: Vec<String>,
    id: u32,
}

impl Namespaces {
    pub fn new(tags: &[&str]) -> Namespaces {
        // Unique per test: the tests of one run share a process id.
        static N: AtomicU32 = AtomicU32::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let id = (std::process::id() % 10_000) * 10 + n % 10;
        let namespaces = Namespaces {
            names: tags
                .iter()
                .map(|tag| format!("zbridge-{tag}-{id}"))
                .collect(),
            id,
        };
        for name in &namespaces.names {
            ip(&["netns", "add", name]);
            ip(&["-n", name, "link", "set", "lo", "up"]);
        }
        namespaces
    }

    /// A veth pair from namespace `a` to `b`, named `names` inside them
    /// (one name may serve in every namespace, e.g. `eth0`), down.
    pub fn veth(&self, (a, b): (usize, usize), names: [&str; 2]) {
        static N: AtomicU32 = AtomicU32::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed) % 100;
        let outside = [0, 1].map(|end| format!("zbv{}x{n}{end}", self.id));
        ip(&[
            "link",
            "add",
            &outside[0],
            "type",
            "veth",
            "peer",
            "name",
            &outside[1],
        ]);
        for ((ns, outside), name) in [a, b].into_iter().zip(&outside).zip(names) {
            ip(&["link", "set", outside, "netns", &self.names[ns]]);
            ip(&["-n", &self.names[ns], "link", "set", outside, "name", name]);
        }
    }

    /// `ip -n NAMESPACE ARGS...` in namespace `i`.
    pub fn ip(&self, i: usize, args: &[&str]) {
        let mut all = vec!["-n", &self.names[i]];
        all.extend_from_slice(args);
        ip(&all);
    }

    /// A command that runs `program` inside namespace `i`.
    pub fn command(&self, i: usize, program: &Path) -> Command {
        let mut command = Command::new("ip");
        command.args(["netns", "exec", &self.names[i]]).arg(program);
        command
    }
}

impl Drop for Namespaces {
    fn drop(&mut self) {
        for name in &self.names {
            let _ = Command::new("ip").args(["netns", "del", name]).status();
        }
    }
}
