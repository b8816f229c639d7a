//! Two machines, one address (deploy/keepalived, docs/HA.md): each machine
//! is a network namespace with a bridge and a keepalived that runs the
//! shipped keepalived.conf; a third holds the service `pc2` and a plain
//! pyzmq REQ agent that knows only the floating address. The test makes
//! and deletes the namespaces, and every process is killed by its pid when
//! dropped, also when an assertion fails. Needs root and keepalived
//! (scripts/test installs it). The bridges run at the design's default
//! heartbeat timings (1 s / 3 s).

use crate::support::netns::Namespaces;
use crate::support::*;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// The primary's machine, the secondary's, and the agents' (with the
/// switch: a Linux bridge that both machines' `eth0` plug into).
const ADDR: [&str; 3] = ["10.231.9.1", "10.231.9.2", "10.231.9.3"];
const FLOATING: &str = "10.231.9.100";
const NODE: [&str; 2] = ["primary", "secondary"];
/// The agent's own retry timeout (Lazy Pirate).
const AGENT_TIMEOUT: Duration = Duration::from_millis(500);

/// A directory of the test's own, removed when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> TempDir {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("zbridge-vrrp-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("a temporary directory");
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The shipped keepalived.conf in `dir`, beside a site.conf made of `site`
/// (the shipped one, or the test's addresses).
fn install(dir: &Path, site: &str) -> PathBuf {
    let shipped = root().join("deploy/keepalived");
    let conf = dir.join("keepalived.conf");
    std::fs::copy(shipped.join("keepalived.conf"), &conf).expect("copy keepalived.conf");
    std::fs::write(dir.join("site.conf"), site).expect("write site.conf");
    conf
}

/// `$ZBRIDGE_CHECK=` pointing at this checkout's zbridge-check.
fn check_line() -> String {
    let check = root().join("deploy/keepalived/zbridge-check");
    format!("$ZBRIDGE_CHECK={}\n", check.display())
}

/// The three machines and the keepalived config; deleted when dropped.
struct Site {
    ns: Namespaces,
    dir: TempDir,
    conf: PathBuf,
}

impl Site {
    fn new() -> Site {
        let ns = Namespaces::new(&["ka", "kb", "kc"]);
        ns.ip(2, &["link", "add", "br0", "type", "bridge"]);
        for (machine, port) in [(0, "pa"), (1, "pb")] {
            ns.veth((machine, 2), ["eth0", port]);
            ns.ip(2, &["link", "set", port, "master", "br0"]);
            ns.ip(2, &["link", "set", port, "up"]);
            let addr = format!("{}/24", ADDR[machine]);
            ns.ip(machine, &["addr", "add", &addr, "dev", "eth0"]);
            ns.ip(machine, &["link", "set", "eth0", "up"]);
        }
        ns.ip(
            2,
            &["addr", "add", &format!("{}/24", ADDR[2]), "dev", "br0"],
        );
        ns.ip(2, &["link", "set", "br0", "up"]);
        let dir = TempDir::new();
        let site = format!(
            "$ZBRIDGE_ADDRESS={FLOATING}/24\n$ZBRIDGE_INTERFACE=eth0\n\
             @primary $ZBRIDGE_SELF={a}\n@primary $ZBRIDGE_PEER={b}\n\
             @secondary $ZBRIDGE_SELF={b}\n@secondary $ZBRIDGE_PEER={a}\n\
             @primary $ZBRIDGE_MONITOR=5620\n@secondary $ZBRIDGE_MONITOR=5621\n\
             $ZBRIDGE_ROUTER_ID=56\n{check}",
            a = ADDR[0],
            b = ADDR[1],
            check = check_line(),
        );
        let conf = install(&dir.0, &site);
        Site { ns, dir, conf }
    }

    /// The pyzmq service `pc2` on the agents' machine, port 5602.
    fn service(&self) -> Process {
        let python = self.ns.command(2, Path::new("python3"));
        let host = format!("--host={}", ADDR[2]);
        py_service_with(python, "pc2", 5602, &[&host]).0
    }

    /// The bridge of machine 0 (the primary node) or 1 (the secondary):
    /// its frontends on every address of its machine, the floating one
    /// included; heartbeats and proof of death on the machines' own.
    fn bridge(&self, machine: usize, extra: &[&str]) -> BridgeProcess {
        let mut command = self.ns.command(machine, exe());
        command.args([
            "run",
            &format!("--mode={}", ["active", "passive"][machine]),
            "--bind-host=0.0.0.0",
            &format!("--primary-host={}", ADDR[0]),
            &format!("--secondary-host={}", ADDR[1]),
            "--main-pc-addr=",
            &format!("--pc2-addr=tcp://{}:5602", ADDR[2]),
        ]);
        command.args(extra);
        BridgeProcess::start(command).expect("the bridge starts on its machine")
    }

    /// keepalived on machine 0 or 1, with the shipped config.
    fn keepalived(&self, machine: usize) -> Keepalived {
        let pid = |name: &str| self.dir.0.join(format!("{name}-{machine}.pid"));
        let vrrp_pid = pid("vrrp");
        let mut command = self.ns.command(machine, Path::new("sh"));
        // Its log goes to stderr: merged into stdout, where Process reads
        // the lines a test waits for.
        command
            .args(["-c", "exec keepalived \"$@\" 2>&1", "keepalived"])
            .args(["--vrrp", "--dont-fork", "--log-console", "--no-syslog"])
            .args(["--config-id", NODE[machine], "--use-file"])
            .arg(&self.conf)
            .arg("--pid")
            .arg(pid("keepalived"))
            .arg("--vrrp_pid")
            .arg(&vrrp_pid)
            .arg("--checkers_pid")
            .arg(pid("checkers"));
        let (process, _) =
            Process::spawn(command, |l| l.contains("Startup complete")).expect("keepalived starts");
        Keepalived { process, vrrp_pid }
    }

    /// The machine (0 or 1) that holds the floating address, if one does.
    fn holder(&self) -> Option<usize> {
        (0..2).find(|&machine| {
            Command::new("ip")
                .args([
                    "-n",
                    &self.ns.names[machine],
                    "-o",
                    "addr",
                    "show",
                    "dev",
                    "eth0",
                ])
                .output()
                .is_ok_and(|out| {
                    String::from_utf8_lossy(&out.stdout).contains(&format!(" {FLOATING}/"))
                })
        })
    }

    /// Wait for the address to be on `machine`; when it was seen there.
    fn moves_to(&self, machine: usize, within: Duration) -> Instant {
        assert!(
            wait_until(within, || self.holder() == Some(machine)),
            "the address is on machine {machine} within {within:?} (holder: {:?})",
            self.holder()
        );
        Instant::now()
    }

    /// The plain pyzmq agent on the agents' machine: lockstep REQ to the
    /// floating address, retrying on its own timeout (Lazy Pirate).
    fn agent(&self) -> Process {
        let python = self.ns.command(2, Path::new("python3"));
        let endpoint = format!("tcp://{FLOATING}:5600");
        lockstep_agent(python, &endpoint, "pc2", 60.0, "x", Some(AGENT_TIMEOUT))
    }
}

/// keepalived and its VRRP child: stopped (TERM, so that it gives the
/// address up) when dropped, killed if that does not do.
struct Keepalived {
    process: Process,
    vrrp_pid: PathBuf,
}

impl Keepalived {
    /// How many times its log says `Entering STATE`.
    fn entered(&self, state: &str) -> usize {
        let needle = format!("Entering {state} STATE");
        self.process
            .output()
            .iter()
            .filter(|l| l.contains(&needle))
            .count()
    }

    /// Its log's lines of state changes and of its checks' verdicts.
    fn transitions(&self) -> Vec<String> {
        (self.process.output().into_iter())
            .filter(|l| {
                ["Entering", "Script", "priority"]
                    .iter()
                    .any(|w| l.contains(w))
            })
            .collect()
    }
}

impl Drop for Keepalived {
    fn drop(&mut self) {
        let child = std::fs::read_to_string(&self.vrrp_pid).unwrap_or_default();
        let _ = self.process.signal("TERM");
        self.process.wait_exit(Duration::from_secs(3));
        let child = child.trim();
        let comm = std::fs::read_to_string(format!("/proc/{child}/comm")).unwrap_or_default();
        if !child.is_empty() && comm.trim() == "keepalived" {
            let _ = Command::new("kill").args(["-KILL", child]).status();
        }
    }
}

/// The agent's replies: when each was read.
fn replies(agent: &Process) -> Vec<Instant> {
    agent
        .timed_events()
        .into_iter()
        .filter(|(_, e)| e["own"] == true)
        .map(|(at, _)| at)
        .collect()
}

/// The agent's longest wait between two replies across `fault`: waits for
/// a reply read after `moved` (when the address was seen on its new
/// machine), then takes the longest gap from the last reply before the
/// fault to that one (replies in flight at the fault do not hide it).
fn longest_wait(agent: &Process, fault: Instant, moved: Instant, within: Duration) -> Duration {
    assert!(
        wait_until(within, || replies(agent).last() > Some(&moved)),
        "the agent is served again within {within:?}: {:?}",
        agent.output().last()
    );
    let replies = replies(agent);
    let first = replies.iter().rposition(|&at| at < fault).unwrap();
    let last = replies.iter().position(|&at| at > moved).unwrap();
    replies[first..=last]
        .windows(2)
        .map(|w| w[1] - w[0])
        .max()
        .unwrap()
}

/// The pair serving (with `extra` flags), the address on the active's
/// machine (0), the agent served through it.
fn serving(
    site: &Site,
    extra: &[&str],
) -> (BridgeProcess, BridgeProcess, [Keepalived; 2], Process) {
    let primary = site.bridge(0, extra);
    let secondary = site.bridge(1, extra);
    assert_eq!(secondary.ready["role"], "passive");
    let keepalived = [site.keepalived(0), site.keepalived(1)];
    site.moves_to(0, Duration::from_secs(15));
    let agent = site.agent();
    assert!(
        wait_until(Duration::from_secs(10), || replies(&agent).len() >= 20),
        "the agent is served through the floating address"
    );
    (primary, secondary, keepalived, agent)
}

/// The address stays on `machine` (3 s: 12 adverts, 3 checks of each
/// machine) after the other machine's keepalived is back in BACKUP, and
/// neither keepalived enters MASTER again.
fn stays_on(site: &Site, machine: usize, keepalived: &[Keepalived; 2], backups: usize) {
    let other = &keepalived[1 - machine];
    assert!(
        wait_until(Duration::from_secs(15), || other.entered("BACKUP")
            > backups),
        "the other machine's keepalived is back in BACKUP"
    );
    let masters = keepalived.each_ref().map(|k| k.entered("MASTER"));
    let moved = wait_until(Duration::from_secs(3), || site.holder() != Some(machine));
    // On a failure, what each keepalived went through: its states and its
    // checks' verdicts, to tell a slow check from a lost advert.
    let logs = || keepalived.each_ref().map(Keepalived::transitions);
    assert!(
        !moved,
        "the address left machine {machine}: {:?}; keepalived logs: {:#?}",
        site.holder(),
        logs()
    );
    assert_eq!(
        keepalived.each_ref().map(|k| k.entered("MASTER")),
        masters,
        "a keepalived entered MASTER again; their logs: {:#?}",
        logs()
    );
}

#[test]
fn kill_9_of_the_holders_bridge_moves_the_address_and_its_return_leaves_it() {
    let site = Site::new();
    let _service = site.service();
    let (primary, secondary, keepalived, agent) = serving(&site, &[]);

    let backups = keepalived[0].entered("BACKUP");
    let killed = Instant::now();
    primary.signal("KILL").unwrap();
    let moved = site.moves_to(1, Duration::from_secs(3));
    let gap = longest_wait(&agent, killed, moved, Duration::from_secs(10));
    let moved = moved - killed;
    eprintln!(
        "kill -9 of the holder's bridge: the address moved after {moved:?}; \
         the agent (retrying after {AGENT_TIMEOUT:?}) waited {gap:?} between two replies"
    );
    assert!(moved < Duration::from_millis(1500), "{moved:?}");
    assert!(gap < AGENT_TIMEOUT * 4, "{gap:?}");
    secondary
        .wait_for_event(Duration::from_secs(1), |e| e["reason"] == "peer_died")
        .expect("the secondary took over on the proof of death");

    // The killed bridge comes back as passive; the address stays where
    // the active is (no failback: preempt = false).
    let restarted = site.bridge(0, &[]);
    assert_eq!(restarted.ready["role"], "passive");
    stays_on(&site, 1, &keepalived, backups);
    let served = replies(&agent).len();
    assert!(wait_until(Duration::from_secs(5), || replies(&agent).len()
        > served + 5));
    eprintln!("the killed bridge restarted: the address stayed on the active's machine");
}

#[test]
fn sigstop_of_the_holders_bridge_moves_the_address_and_its_waking_leaves_it() {
    let site = Site::new();
    let _service = site.service();
    let (primary, secondary, keepalived, agent) = serving(&site, &[]);

    let backups = keepalived[0].entered("BACKUP");
    let stopped = Instant::now();
    primary.signal("STOP").unwrap();
    let moved = site.moves_to(1, Duration::from_secs(3));
    // The secondary serves the primary port once heartbeat_timeout (3 s)
    // has passed: a hung process leaves no proof of death.
    let gap = longest_wait(&agent, stopped, moved, Duration::from_secs(10));
    let moved = moved - stopped;
    eprintln!(
        "SIGSTOP of the holder's bridge: the address moved after {moved:?}; \
         the agent waited {gap:?} between two replies (heartbeat_timeout 3 s)"
    );
    assert!(moved < Duration::from_millis(1500), "{moved:?}");
    assert!(gap < Duration::from_secs(6), "{gap:?}");
    secondary
        .wait_for_event(Duration::from_secs(1), |e| e["reason"] == "peer_silent")
        .expect("the secondary took over on silence");

    // Woken, the old active hears the higher epoch and steps down; the
    // address stays.
    primary.signal("CONT").unwrap();
    primary
        .wait_for_event(Duration::from_secs(10), |e| {
            e["reason"] == "peer_has_higher_epoch"
        })
        .expect("the woken bridge steps down");
    stays_on(&site, 1, &keepalived, backups);
}

#[test]
fn with_preempt_the_address_follows_the_role_back_once() {
    let site = Site::new();
    let _service = site.service();
    let preempt = ["--preempt=true"];
    let (primary, secondary, keepalived, agent) = serving(&site, &preempt);
    let killed = Instant::now();
    primary.signal("KILL").unwrap();
    let moved = site.moves_to(1, Duration::from_secs(3));
    longest_wait(&agent, killed, moved, Duration::from_secs(10));
    let masters = keepalived.each_ref().map(|k| k.entered("MASTER"));

    let _restarted = site.bridge(0, &preempt);
    secondary
        .wait_for_event(Duration::from_secs(10), |e| {
            e["event"] == "role" && e["reason"] == "preempt"
        })
        .expect("the secondary hands the role back");
    let handed = Instant::now();
    let moved = site.moves_to(0, Duration::from_secs(10));
    let gap = longest_wait(&agent, handed, moved, Duration::from_secs(10));
    let moved = moved - handed;
    eprintln!(
        "preempt: the address followed the role back {moved:?} after the handover; \
         the agent waited {gap:?} between two replies"
    );
    let again = wait_until(Duration::from_secs(3), || site.holder() != Some(0));
    assert!(!again, "the address moved again: {:?}", site.holder());
    assert_eq!(
        keepalived.each_ref().map(|k| k.entered("MASTER")),
        [masters[0] + 1, masters[1]],
        "the address moved back once"
    );
}

#[test]
fn the_shipped_keepalived_config_passes_keepaliveds_test() {
    let dir = TempDir::new();
    let site = std::fs::read_to_string(root().join("deploy/keepalived/site.conf")).unwrap();
    // The shipped site, with the check where this checkout has it.
    let site: String = site
        .lines()
        .filter(|l| !l.starts_with("$ZBRIDGE_CHECK="))
        .map(|l| format!("{l}\n"))
        .collect();
    let conf = install(&dir.0, &(site + &check_line()));
    let test = |config_id: Option<&str>| {
        let mut command = Command::new("keepalived");
        command.arg("--config-test").arg("--use-file").arg(&conf);
        if let Some(id) = config_id {
            command.args(["--config-id", id]);
        }
        let out = command.output().expect("run keepalived");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    for node in NODE {
        let (ok, errors) = test(Some(node));
        assert!(ok, "--config-id {node}: {errors}");
    }
    // Without its node as config id a machine has no address of its own:
    // the test says so rather than start a keepalived that cannot work.
    let (ok, errors) = test(None);
    assert!(!ok && errors.contains("ZBRIDGE_SELF"), "{errors}");
}

/// deploy/keepalived/zbridge-check on `url`: whether it passed, and how
/// long it took.
fn run_check(url: &str) -> (bool, Duration) {
    let started = Instant::now();
    let status = Command::new(root().join("deploy/keepalived/zbridge-check"))
        .arg(url)
        .stderr(std::process::Stdio::null())
        .status()
        .expect("run zbridge-check");
    (status.success(), started.elapsed())
}

#[test]
fn zbridge_check_passes_only_a_healthy_bridge_and_ends_within_keepaliveds_interval() {
    // keepalived's interval: a check still running then skips a turn.
    const INTERVAL: Duration = Duration::from_secs(1);
    let mut python = Command::new("python3");
    python.arg(root().join("tests/peers/http_answers.py"));
    let (_answers, line) =
        Process::spawn(python, |l| l.starts_with("ready ")).expect("the HTTP server starts");
    let port = line["ready ".len()..].trim();
    for (name, passes) in [
        ("ok", true),
        ("slow", true),
        ("hang", false),
        ("unavailable", false),
        ("okay", false),
        ("notjson", false),
        ("empty", false),
        ("204", false),
        ("301", false),
    ] {
        let (passed, took) = run_check(&format!("http://127.0.0.1:{port}/{name}"));
        assert_eq!(passed, passes, "/{name}");
        assert!(took < INTERVAL, "/{name}: the check took {took:?}");
    }
    let (passed, _) = run_check(&format!("http://127.0.0.1:{}/", free_port()));
    assert!(!passed, "nothing listening");

    // A real bridge: healthy, in its role only; a role it cannot have
    // (a typo) fails; hung (SIGSTOP), it fails within the interval.
    let bridge = bridge(&[]);
    let health = format!("{}/health", bridge.ready["monitor"].as_str().unwrap());
    assert!(wait_until(Duration::from_secs(10), || run_check(&health).0));
    for (query, passes) in [
        ("?role=active", true),
        ("?role=passive", false),
        ("?role=ACTIVE", false),
        ("?role=", false),
    ] {
        let (passed, took) = run_check(&format!("{health}{query}"));
        assert_eq!(passed, passes, "{query}");
        assert!(took < INTERVAL, "{query}: the check took {took:?}");
    }
    bridge.signal("STOP").unwrap();
    let (passed, took) = run_check(&health);
    bridge.signal("CONT").unwrap();
    assert!(!passed, "a hung bridge");
    assert!(took < INTERVAL, "a hung bridge: the check took {took:?}");
}
