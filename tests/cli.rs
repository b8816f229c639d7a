//! The command line: config checking, exit codes, `request` and `status`.

use crate::support::*;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

fn zbridge(args: &[&str]) -> Output {
    Command::new(exe())
        .args(args)
        .output()
        .expect("run zbridge")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn both_example_configs_are_valid_and_their_targets_are_the_files_own() {
    let out = zbridge(&["check-config", "config/zbridge.example.toml"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("memory -> tcp://127.0.0.1:5596"));

    // The LAN example is validated, never run: its addresses stay in the
    // file, and check-config must report exactly those.
    let out = zbridge(&["check-config", "config/two-pc.example.toml"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    let file: toml::Table = std::fs::read_to_string("config/two-pc.example.toml")
        .unwrap()
        .parse()
        .unwrap();
    for (target, key) in [("main_pc", "main_pc_addr"), ("pc2", "pc2_addr")] {
        let addr = file[key].as_str().unwrap();
        assert!(
            !addr.contains("127.0.0.1"),
            "the LAN example keeps LAN addresses"
        );
        assert!(stdout.contains(&format!("{target} -> {addr}")), "{stdout}");
    }
    let dreamworld = file["streams"]["dreamworld"]["endpoint"].as_str().unwrap();
    assert!(
        stdout.contains(&format!("dreamworld <- {dreamworld}")),
        "{stdout}"
    );
}

#[test]
fn a_stream_config_is_checked_by_key() {
    for (toml, key) in [
        (
            "[streams.dream]\nendpoint = \"nowhere\"\n",
            "streams.dream.endpoint",
        ),
        (
            "[streams.\"bad name\"]\nendpoint = \"tcp://127.0.0.1:5598\"\n",
            "streams.bad name",
        ),
        (
            "[streams.dream]\nendpoint = \"tcp://127.0.0.1:5598\"\nfilter = \"a\"\n",
            "filter",
        ),
        ("stream_hwm = 0\n", "stream_hwm"),
        ("primary_pub_port = 5600\n", "primary_pub_port"),
    ] {
        let config = TempConfig::new(toml);
        let out = zbridge(&["check-config", &config.0.display().to_string()]);
        assert_eq!(out.status.code(), Some(2), "{toml}");
        let stderr = text(&out.stderr);
        assert!(stderr.contains(&format!("`{key}`")), "{toml}: {stderr}");
    }
}

#[test]
fn check_config_names_the_bad_key_and_exits_2() {
    for (toml, key) in [
        ("primry_port = 5600\n", "primry_port"),
        ("heartbeat_timeout = 0.5\n", "heartbeat_timeout"),
        ("pc2_addr = \"192.0.2.1\"\n", "pc2_addr"),
        ("[targets.x]\nendpont = \"tcp://127.0.0.1:1\"\n", "endpont"),
    ] {
        let config = TempConfig::new(toml);
        let out = zbridge(&["check-config", config.0.to_str().unwrap()]);
        assert_eq!(out.status.code(), Some(2), "{toml}");
        let stderr = text(&out.stderr);
        assert!(stderr.contains(&format!("`{key}`")), "{toml} -> {stderr}");
    }
    let out = zbridge(&["check-config", "/nonexistent.toml"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("cannot read /nonexistent.toml"));
}

#[test]
fn flags_override_the_file() {
    let out = zbridge(&[
        "check-config",
        "config/zbridge.example.toml",
        "--primary-port",
        "7000",
        "--pc2-addr",
        "tcp://127.0.0.1:7002",
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert!(stdout.contains("primary_port = 7000"), "{stdout}");
    assert!(stdout.contains("pc2 -> tcp://127.0.0.1:7002"), "{stdout}");
}

#[test]
fn run_refuses_bad_setups_with_exit_2_or_1() {
    let out = zbridge(&["run", "--primary-port=0"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("--mode"),
        "{}",
        text(&out.stderr)
    );

    let out = zbridge(&["run", "--mode=active", "--request-timeout=0"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("`request_timeout`"));

    // A port it must own is taken: a runtime failure that says what to check.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let mut child = Command::new(exe())
        .args([
            "run",
            "--mode=active",
            &format!("--primary-heartbeat-port={port}"),
        ])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let exited = wait_until(std::time::Duration::from_secs(10), || {
        child.try_wait().ok().flatten().is_some()
    });
    if !exited {
        let _ = child.kill();
    }
    let out = child.wait_with_output().unwrap();
    assert!(
        exited,
        "zbridge should exit when its heartbeat port is taken"
    );
    assert_eq!(out.status.code(), Some(1));
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("cannot bind the heartbeat publisher"),
        "{stderr}"
    );
}

#[test]
fn request_and_status_from_a_terminal() {
    let rs = EchoService::start(Some("pc2")).unwrap();
    let bridge = bridge(&[format!("--pc2-addr={}", rs.endpoint)]);
    let ep = bridge.frontend.as_str();

    let out = zbridge(&[
        "request",
        "--endpoint",
        ep,
        "--target",
        "pc2",
        "hello there",
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "pc2\nhello there\n");

    let out = zbridge(&["request", "--endpoint", ep, "--target", "pc3", "x"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("unknown_target"));

    let out = zbridge(&["status", "--endpoint", ep]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(doc["role"], "active");
    assert_eq!(doc["targets"]["pc2"]["replies_total"], 1);

    let nobody = format!("tcp://127.0.0.1:{}", free_port());
    let out = zbridge(&["status", "--endpoint", &nobody, "--timeout", "0.3"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("no answer"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn sighup_does_not_stop_the_bridge() {
    let bridge = bridge(&[]);
    bridge.signal("HUP").unwrap();
    assert!(bridge.wait_for_log("SIGHUP", std::time::Duration::from_secs(5)));
    let pong = zbridge_lab::ask(
        &bridge.frontend,
        &[br#"{"action":"ping"}"#],
        std::time::Duration::from_secs(5),
    );
    assert!(pong.is_some(), "still serving after SIGHUP");
}

#[test]
fn logs_can_be_json_lines() {
    let bridge = bridge(&["--log-format=json".into()]);
    assert!(bridge.wait_for_log("zbridge ready", std::time::Duration::from_secs(5)));
    let line = bridge
        .log()
        .into_iter()
        .find(|l| l.contains("zbridge ready"))
        .unwrap();
    let doc: serde_json::Value = serde_json::from_str(&line).expect("a JSON log line");
    assert_eq!(doc["level"], "INFO");
    assert_eq!(doc["frontend"], bridge.frontend.as_str());
}

#[test]
fn bench_load_reports_its_figures_in_a_last_json_line() {
    let out = zbridge(&["bench", "load", "--duration=2", "--rate=500", "--clients=2"]);
    let last = clean_last_line(&out);
    let sent = last["sent"].as_u64().unwrap();
    assert!((800..=1100).contains(&sent), "about 500/s for 2 s: {last}");
    for key in ["p50_ms", "p99_ms", "p999_ms", "rps"] {
        assert!(last[key].as_f64().unwrap() > 0.0, "{key}: {last}");
    }
    assert_eq!(last["rss_end_kb"].as_array().unwrap().len(), 2);
}

#[test]
fn bench_client_drives_a_config_file_pair_and_ends_with_a_json_line() {
    let rs = EchoService::start(None).unwrap();
    let b = bridge(&[format!("--pc2-addr={}", rs.endpoint)]);
    let port = b.frontend.rsplit(':').next().unwrap();
    // A bridge config without a [client] section: the client derives its
    // endpoints from primary_port (this bridge) and secondary_port (none).
    let config = TempConfig::new(&format!(
        "primary_port = {port}\nsecondary_port = {}\nprimary_heartbeat_port = {}\n\
         secondary_heartbeat_port = {}\n",
        free_port(),
        free_port(),
        free_port()
    ));
    let out = zbridge(&[
        "bench",
        "client",
        &config.flag(),
        "--target=pc2",
        "--rate=300",
        "--duration=2",
    ]);
    let last = clean_last_line(&out);
    assert_eq!(last["failovers"], 0, "{last}");
    let sent = last["sent"].as_u64().unwrap();
    assert!((450..=650).contains(&sent), "about 300/s for 2 s: {last}");
    assert!(last["p99_ms"].as_f64().unwrap() > 0.0, "{last}");
    assert_eq!(status(&b.frontend)["targets"]["pc2"]["replies_total"], sent);
}

#[test]
fn the_benches_proxy_is_a_process_that_forwards_every_request_until_killed() {
    let rs = EchoService::start(None).unwrap();
    let mut command = Command::new(exe());
    command.args(["bench", "proxy", "--front=router", "--back=dealer"]);
    command.arg(format!("--upstream={}", rs.endpoint));
    let (mut proxy, line) = Process::spawn(command, |l| l.starts_with("proxy listening on "))
        .expect("the proxy starts");
    let endpoint = line.trim_start_matches("proxy listening on ").to_owned();
    assert!(endpoint.starts_with("tcp://127.0.0.1:"), "{line}");
    let report = Load {
        endpoint,
        targets: vec!["pc2".into()],
        path: Route::Direct,
        clients: 2,
        in_flight: 8,
        requests: 2_000,
        duration: Duration::from_secs(20),
        payload_bytes: 100,
        settle: Duration::from_secs(5),
        tagged: false,
        rate: None,
        curve: None,
    }
    .run()
    .unwrap();
    assert_eq!((report.ok, report.lost, report.mismatched), (2_000, 0, 0));
    assert!(proxy.cpu_seconds().is_some(), "its CPU is read from /proc");
    proxy.signal("KILL").unwrap();
    assert!(proxy.wait_exit(Duration::from_secs(5)).is_some());
}

/// The last stdout line of a bench run that succeeded, as JSON, checked
/// for nothing lost.
fn clean_last_line(out: &std::process::Output) -> serde_json::Value {
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    let last: serde_json::Value =
        serde_json::from_str(stdout.lines().last().unwrap()).expect("a JSON line");
    assert_eq!(last["lost"], 0, "{last}");
    assert_eq!(last["ok"], last["sent"], "{last}");
    last
}

#[test]
fn the_demo_loses_nothing_and_says_truly_whether_the_stream_moved() {
    let mut command = Command::new(exe());
    command.args(["demo", "--seconds=3"]);
    let (mut demo, _) =
        Process::spawn(command, |l| l.starts_with("zbridge demo:")).expect("the demo starts");
    let status = demo.wait_exit(std::time::Duration::from_secs(60));
    let output = demo.output().join("\n");
    assert!(
        status.is_some_and(|s| s.success()),
        "{output}\n{}",
        demo.log().join("\n")
    );
    // On the kernel's word that the active died, not after the 500 ms
    // heartbeat timeout.
    let took: u64 = output
        .split("the passive bridge held the primary port ")
        .nth(1)
        .and_then(|rest| rest.split(' ').next())
        .and_then(|ms| ms.parse().ok())
        .unwrap_or_else(|| panic!("no takeover line: {output}"));
    assert!(took < 500, "took {took} ms: {output}");
    assert_eq!(output.matches(", lost 0,").count(), 2, "{output}");
    // The chart marks the kill once; the rate said is the rate aimed at,
    // with what was sent beside it.
    assert_eq!(
        output.matches("<- kill -9 of the active").count(),
        1,
        "{output}"
    );
    assert!(output.contains("each aims at 500 requests/s"), "{output}");
    assert!(output.contains("(sent: A "), "{output}");
    // The subscriber follows whichever bridge's copy reached it first: a
    // move when that was the killed active's, none when it was the
    // survivor's (the demo checks the count against its own claim and
    // exits 1 when they disagree).
    let moved = if output.contains("it followed the killed bridge's copy") {
        1
    } else {
        assert!(
            output.contains("it followed the surviving bridge's copy"),
            "{output}"
        );
        0
    };
    assert!(
        output.contains(&format!(
            "missed 0, was told of 0 lost, moved to the other bridge {moved} time(s)"
        )),
        "{output}"
    );
}

/// `zbridge ARGS...`, killed if it has not exited within `deadline`;
/// returns its output and how long it ran.
fn zbridge_within(args: &[&str], deadline: Duration) -> (Output, Duration) {
    let started = Instant::now();
    let mut child = Command::new(exe())
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run zbridge");
    let exited = wait_until(deadline, || child.try_wait().ok().flatten().is_some());
    if !exited {
        let _ = child.kill();
    }
    let out = child.wait_with_output().unwrap();
    assert!(exited, "zbridge {args:?} still running after {deadline:?}");
    (out, started.elapsed())
}

#[test]
fn check_config_refuses_durations_and_rates_the_clock_cannot_take() {
    for (toml, key) in [
        ("heartbeat_timeout = 1e19\n", "heartbeat_timeout"),
        ("request_timeout = 1e19\n", "request_timeout"),
        ("drain_timeout = 1e19\n", "drain_timeout"),
        (
            "[targets.x]\nendpoint = \"tcp://127.0.0.1:1\"\nrequest_timeout = 1e19\n",
            "targets.x.request_timeout",
        ),
        (
            "rate_limit_per_client = 1e-300\nrate_limit_per_client_burst = 1\n",
            "rate_limit_per_client",
        ),
        (
            "rate_limit_global = 1e-300\nrate_limit_global_burst = 1\n",
            "rate_limit_global",
        ),
        (
            "[client]\nreconnect_delay = 1e19\n",
            "client.reconnect_delay",
        ),
    ] {
        let config = TempConfig::new(toml);
        let (out, _) = zbridge_within(
            &["check-config", config.0.to_str().unwrap()],
            Duration::from_secs(10),
        );
        assert_eq!(out.status.code(), Some(2), "{toml}");
        let stderr = text(&out.stderr);
        assert!(stderr.contains(&format!("`{key}`")), "{toml} -> {stderr}");
        assert!(
            stderr.contains("604800") || stderr.contains("0.001 to"),
            "{toml}: the allowed range is given: {stderr}"
        );
    }
}

#[test]
fn a_token_file_that_is_not_a_small_regular_file_is_refused_at_once() {
    let fifo = std::env::temp_dir().join(format!("zbridge-cli-fifo-{}", std::process::id()));
    let made = Command::new("mkfifo").arg(&fifo).status().unwrap();
    assert!(made.success());
    let empty = TempConfig::new("");
    for (path, why) in [
        ("/dev/zero", "a character device"),
        (fifo.to_str().unwrap(), "a FIFO"),
        ("/tmp", "a directory"),
    ] {
        let (out, took) = zbridge_within(
            &[
                "check-config",
                empty.0.to_str().unwrap(),
                &format!("--auth-token-file={path}"),
            ],
            Duration::from_secs(10),
        );
        assert_eq!(out.status.code(), Some(2), "{path}");
        let stderr = text(&out.stderr);
        assert!(
            stderr.contains("`auth_token_file`") && stderr.contains(why),
            "{path}: {stderr}"
        );
        assert!(took < Duration::from_secs(1), "{path}: refused in {took:?}");
    }
    std::fs::remove_file(&fifo).unwrap();
}

#[test]
fn a_config_path_that_is_not_a_small_regular_file_is_refused_at_once() {
    let fifo = std::env::temp_dir().join(format!("zbridge-cli-config-fifo-{}", std::process::id()));
    let made = Command::new("mkfifo").arg(&fifo).status().unwrap();
    assert!(made.success());
    let big = TempConfig::new("");
    std::fs::File::options()
        .write(true)
        .open(&big.0)
        .unwrap()
        .set_len(2 << 20)
        .unwrap();
    for (path, why) in [
        (fifo.to_str().unwrap(), "a FIFO"),
        ("/dev/zero", "a character device"),
        ("/tmp", "a directory"),
        (big.0.to_str().unwrap(), "longer than 1048576 bytes"),
    ] {
        let config = format!("--config={path}");
        for args in [
            vec!["check-config", path],
            vec!["run", "--mode=active", &config],
            vec!["request", &config, "--target=pc2", "{}"],
        ] {
            let (out, took) = zbridge_within(&args, Duration::from_secs(10));
            let stderr = text(&out.stderr);
            assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
            assert!(
                stderr.contains(path) && stderr.contains(why),
                "{args:?}: {stderr}"
            );
            assert!(
                took < Duration::from_secs(2),
                "{args:?}: refused in {took:?}"
            );
        }
    }
    std::fs::remove_file(&fifo).unwrap();
}

#[test]
fn more_targets_than_the_open_file_limit_allows_are_refused_by_check_config_and_run() {
    let mut toml = String::new();
    for i in 0..10_000 {
        toml.push_str(&format!(
            "[targets.t{i}]\nendpoint = \"tcp://127.0.0.1:1\"\n"
        ));
    }
    let many = TempConfig::new(&toml);
    let (out, _) = zbridge_within(
        &["check-config", many.0.to_str().unwrap()],
        Duration::from_secs(10),
    );
    assert_eq!(out.status.code(), Some(2));
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("`targets`: 10002 targets") && stderr.contains("open-file limit of"),
        "{stderr}"
    );
    let (out, _) = zbridge_within(
        &["run", "--mode=active", &many.flag()],
        Duration::from_secs(10),
    );
    assert_eq!(
        out.status.code(),
        Some(2),
        "refused before anything is bound"
    );

    // Under a low limit, far fewer: 100 targets do not fit in 256 files.
    let hundred = TempConfig::new(&toml[..toml.match_indices("[targets.t100]").next().unwrap().0]);
    let out = Command::new("sh")
        .args(["-c", "ulimit -n 256 && exec \"$0\" check-config \"$1\""])
        .arg(exe())
        .arg(&hundred.0)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("102 targets, but at most 42") && stderr.contains("open-file limit of 256"),
        "{stderr}"
    );
}

/// Errors in a user's words (issue 23): a typo gets the key it was meant
/// to be, not the list of 48; a port is "a port number", not `u16`; help
/// names values as a person would; a second bridge on the same ports is
/// told who holds them.
#[test]
fn errors_and_help_speak_the_users_words() {
    for (toml, says) in [
        ("request_timout = 3\n", "did you mean `request_timeout`?"),
        (
            "[targets.x]\nendpont = \"tcp://127.0.0.1:1\"\n",
            "did you mean `endpoint`?",
        ),
        (
            "primary_port = \"5600\"\n",
            "expected a port number, 0 to 65535",
        ),
        (
            "primary_port = 70000\n",
            "expected a port number, 0 to 65535",
        ),
    ] {
        let config = TempConfig::new(toml);
        let out = zbridge(&["check-config", config.0.to_str().unwrap()]);
        assert_eq!(out.status.code(), Some(2), "{toml}");
        let stderr = text(&out.stderr);
        assert!(stderr.contains(says), "{toml} -> {stderr}");
        assert!(
            !stderr.contains("u16") && !stderr.contains("drain_timeout"),
            "{stderr}"
        );
    }
    let help = text(&zbridge(&["run", "--help"]).stdout);
    assert!(help.contains("--primary-port <PORT>"), "{help}");
    assert!(help.contains("--heartbeat-timeout <SECONDS>"), "{help}");
    for rust in ["<u16>", "<f64>", "<usize>", "<u32>", "<i32>"] {
        assert!(!help.contains(rust), "{rust} in: {help}");
    }
    for command in ["keygen", "check-config"] {
        let help = text(&zbridge(&[command, "--help"]).stdout);
        let argument = help
            .lines()
            .skip_while(|l| !l.starts_with("Arguments:"))
            .nth(1);
        assert!(
            argument.is_some_and(|l| l.split_whitespace().count() > 1),
            "{command}'s argument has a description: {help}"
        );
    }
    // No bridge at all: what was tried, for how long, what to check.
    let (nowhere, elsewhere) = (free_port(), free_port());
    let endpoints = format!("tcp://127.0.0.1:{nowhere},tcp://127.0.0.1:{elsewhere}");
    let out = zbridge(&["request", "--target=pc2", "--endpoint", &endpoints, "hi"]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = text(&out.stderr);
    let tried = [
        format!("127.0.0.1:{nowhere}"),
        format!("127.0.0.1:{elsewhere}"),
    ];
    for says in tried
        .iter()
        .map(String::as_str)
        .chain([" s, ", "zbridge status"])
    {
        assert!(stderr.contains(says), "{says} in: {stderr}");
    }
    // A second bridge with the first one's ports.
    let first = bridge(&[]);
    let heartbeat = first.ready["heartbeat"].as_str().unwrap().to_string();
    let port = heartbeat.rsplit(':').next().unwrap();
    let out = zbridge(&[
        "run",
        "--mode=active",
        &format!("--primary-heartbeat-port={port}"),
        "--primary-port=0",
        "--primary-monitor-port=0",
    ]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("another zbridge started with the same ports")
            && stderr.contains("ss -ltnp"),
        "{stderr}"
    );
}
