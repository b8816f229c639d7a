//! The Debian package that scripts/dist builds into dist/, installed on this
//! machine for real (as root, with dpkg): the files, the man page and the
//! completions, a pair run from /usr/bin/zbridge with the packaged config
//! and the unit's command line, lintian, an upgrade over an edited
//! conffile, then remove and purge. scripts/test builds dist/ first; a
//! zbridge package left installed by an earlier run is purged first.

use crate::support::*;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

const UNIT: &str = "/lib/systemd/system/zbridge@.service";
const CONFIG: &str = "/etc/zbridge/zbridge.toml";
const BIN: &str = "/usr/bin/zbridge";

/// The one Debian package in dist/.
fn deb() -> PathBuf {
    let dist = root().join("dist");
    let debs: Vec<PathBuf> = std::fs::read_dir(&dist)
        .map(|entries| {
            entries
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|x| x == "deb"))
                .collect()
        })
        .unwrap_or_default();
    assert!(
        debs.len() == 1,
        "expected one .deb in {}, found {debs:?}: run scripts/dist first (scripts/test does)",
        dist.display()
    );
    debs.into_iter().next().unwrap()
}

/// Run `program args`, stdin closed; its output, whatever the exit status.
fn output(program: &str, args: &[&str]) -> Output {
    Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {program}: {e}"))
}

/// Run `program args` and return its stdout; fail the test if it fails.
fn run(program: &str, args: &[&str]) -> String {
    let out = output(program, args);
    assert!(
        out.status.success(),
        "{program} {args:?}: {}\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The package's status as dpkg reports it ("" when dpkg knows nothing of it).
fn dpkg_status() -> String {
    let out = output(
        "dpkg-query",
        &["-W", "-f=${db:Status-Abbrev}${Version}", "zbridge"],
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// The files (not directories) that `deb` holds, as absolute paths.
fn files_of(deb: &Path) -> BTreeSet<PathBuf> {
    let listing = run("dpkg-deb", &["-c", &deb.to_string_lossy()]);
    listing
        .lines()
        .filter(|l| !l.starts_with('d'))
        .filter_map(|l| l.split_whitespace().last())
        .map(|p| PathBuf::from(p.trim_start_matches('.')))
        .collect()
}

/// The same package with another version (dpkg-deb: unpacked, the control
/// file's Version changed, packed again): an upgrade to install over it.
fn with_version(deb: &Path, version: &str, dir: &Path) -> PathBuf {
    let tree = dir.join("tree");
    run(
        "dpkg-deb",
        &["-R", &deb.to_string_lossy(), &tree.to_string_lossy()],
    );
    let control = tree.join("DEBIAN/control");
    let text = std::fs::read_to_string(&control).unwrap();
    let old = text.lines().find(|l| l.starts_with("Version: ")).unwrap();
    std::fs::write(&control, text.replace(old, &format!("Version: {version}"))).unwrap();
    let out = dir.join(format!("zbridge_{version}.deb"));
    run(
        "dpkg-deb",
        &[
            "--root-owner-group",
            "-b",
            &tree.to_string_lossy(),
            &out.to_string_lossy(),
        ],
    );
    out
}

/// The unit's ExecStart for `instance`, split into words (it has no quotes).
fn exec_start(instance: &str) -> Vec<String> {
    let unit = std::fs::read_to_string(UNIT).unwrap();
    let line = unit
        .lines()
        .find_map(|l| l.strip_prefix("ExecStart="))
        .expect("the unit has an ExecStart");
    line.replace("%i", instance)
        .split_whitespace()
        .map(String::from)
        .collect()
}

/// `instance` started with the unit's command line as systemd would run it
/// (an unprivileged user, as DynamicUser= gives), on the pair's ports.
fn start_as_the_unit(pair: &Pair, instance: &str, pub_ports: &[String]) -> BridgeProcess {
    let mut command = Command::new("setpriv");
    command.args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"]);
    command.args(exec_start(instance));
    command.args(&pair.flags).args(pub_ports);
    BridgeProcess::start(command).expect("the unit's command starts")
}

#[test]
fn the_debian_package_installs_serves_upgrades_and_purges_without_a_trace() {
    let deb = deb();
    let files = files_of(&deb);
    run("dpkg", &["--purge", "zbridge"]);
    for file in &files {
        assert!(
            !file.exists(),
            "{} exists before the install",
            file.display()
        );
    }

    // Install: the binary, the config (a conffile), nothing started.
    run("dpkg", &["-i", &deb.to_string_lossy()]);
    assert!(dpkg_status().starts_with("ii "), "{}", dpkg_status());
    let version = run(BIN, &["--version"]);
    assert_eq!(
        version.trim(),
        format!("zbridge {}", env!("CARGO_PKG_VERSION"))
    );
    let conffiles = run("dpkg-query", &["-W", "-f=${Conffiles}", "zbridge"]);
    assert!(conffiles.contains(CONFIG), "{conffiles}");
    let checked = run(BIN, &["check-config", CONFIG]);
    assert!(checked.contains("pc2 -> tcp://127.0.0.1:5602"), "{checked}");
    assert!(checked.contains("bind_host = \"127.0.0.1\""), "{checked}");

    // The man pages render; the completions are there for the three shells.
    for (page, expect) in [
        ("zbridge", "check-config"),
        ("zbridge-run", "--primary-port"),
    ] {
        let text = run("man", &["-P", "cat", page]);
        assert!(text.contains(expect), "man {page}: {text}");
    }
    let bash = run(
        "bash",
        &[
            "-c",
            "source /usr/share/bash-completion/completions/zbridge && complete -p zbridge",
        ],
    );
    assert!(bash.contains("zbridge"), "{bash}");
    for (file, head) in [
        (
            "/usr/share/zsh/vendor-completions/_zbridge",
            "#compdef zbridge",
        ),
        (
            "/usr/share/fish/vendor_completions.d/zbridge.fish",
            "complete -c zbridge",
        ),
    ] {
        let text = std::fs::read_to_string(file).unwrap();
        assert!(text.contains(head), "{file}");
    }

    // The unit runs the packaged binary; systemd-analyze checks it where it
    // is installed (systemd need not be running).
    let unit = std::fs::read_to_string(UNIT).unwrap();
    assert!(!unit.contains("/usr/local"), "{unit}");
    assert_eq!(exec_start("active")[..2], [BIN, "run"]);
    if Path::new("/usr/bin/systemd-analyze").exists() {
        run(
            "timeout",
            &[
                "60",
                "systemd-analyze",
                "--no-pager",
                "verify",
                "zbridge@active.service",
            ],
        );
    }

    // The pair, from the unit's command line with the packaged config, on
    // free ports; the installed `zbridge request` goes through it.
    let pair = Pair::new(&[]);
    let pub_ports = [
        format!("--primary-pub-port={}", free_port()),
        format!("--secondary-pub-port={}", free_port()),
    ];
    let primary = start_as_the_unit(&pair, "active", &pub_ports);
    assert_eq!(primary.ready["role"], "active");
    let secondary = start_as_the_unit(&pair, "passive", &pub_ports);
    assert_eq!(secondary.ready["role"], "passive");
    for endpoint in [pair.primary_endpoint(), pair.secondary_endpoint()] {
        assert!(
            wait_until(Duration::from_secs(5), || status(&endpoint)["peer"]
                ["alive"]
                == true),
            "{endpoint} hears its peer"
        );
    }
    let endpoints = format!("{},{}", pair.primary_endpoint(), pair.secondary_endpoint());
    let reply = run(
        BIN,
        &[
            "request",
            "--endpoint",
            &endpoints,
            "--target",
            "pc2",
            "hello",
        ],
    );
    assert!(reply.contains("hello"), "{reply}");
    drop((primary, secondary));

    // No errors and no warnings from lintian but the one this package
    // keeps: it is not uploaded to Debian, so no ITP bug to close.
    run(
        "lintian",
        &[
            "--allow-root",
            "--fail-on",
            "error,warning",
            "--suppress-tags",
            "initial-upload-closes-no-bugs",
            &deb.to_string_lossy(),
        ],
    );

    // An upgrade keeps an edited conffile, without asking.
    let edited = std::fs::read_to_string(CONFIG)
        .unwrap()
        .replace("request_timeout = 5.0", "request_timeout = 7.0");
    std::fs::write(CONFIG, &edited).unwrap();
    let scratch = std::env::temp_dir().join(format!("zbridge-deb-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&scratch);
    std::fs::create_dir_all(&scratch).unwrap();
    let newer = with_version(&deb, "99.0.0-1", &scratch);
    run("dpkg", &["-i", &newer.to_string_lossy()]);
    assert_eq!(dpkg_status(), "ii 99.0.0-1");
    assert_eq!(std::fs::read_to_string(CONFIG).unwrap(), edited);
    assert!(run(BIN, &["check-config", CONFIG]).contains("request_timeout = 7"));
    std::fs::remove_dir_all(&scratch).unwrap();

    // Enabled as README.Debian says (systemctl makes the links whether or
    // not systemd runs), then removed: the program goes, the config stays;
    // purged: nothing of the package stays, the links neither.
    run("systemctl", &["enable", "zbridge@active.service"]);
    let link = Path::new("/etc/systemd/system/multi-user.target.wants/zbridge@active.service");
    assert!(
        link.is_symlink(),
        "systemctl enable made {}",
        link.display()
    );
    run("dpkg", &["-r", "zbridge"]);
    assert!(dpkg_status().starts_with("rc "), "{}", dpkg_status());
    assert!(!Path::new(BIN).exists() && !Path::new(UNIT).exists());
    assert!(Path::new(CONFIG).exists(), "remove keeps the conffile");
    run("dpkg", &["--purge", "zbridge"]);
    assert_eq!(dpkg_status(), "");
    let left: Vec<&PathBuf> = files.iter().filter(|f| f.exists()).collect();
    assert!(left.is_empty(), "left after purge: {left:?}");
    for dir in [
        "/etc/zbridge",
        "/usr/share/zbridge",
        "/usr/share/doc/zbridge",
    ] {
        assert!(!Path::new(dir).exists(), "{dir} left after purge");
    }
    assert!(!link.is_symlink(), "{} left after purge", link.display());
}
