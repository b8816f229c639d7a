//! Live reconfiguration: SIGHUP and a change of the file re-read the
//! config; a valid one applies without dropping a request in flight, an
//! invalid one is rejected by key and the old config keeps serving.

use crate::support::*;
use std::time::Duration;

fn reloaded(bridge: &BridgeProcess, generation: u64) -> bool {
    bridge
        .wait_for_event(Duration::from_secs(5), |e| {
            e["event"] == "reloaded" && e["generation"] == generation
        })
        .is_some()
}

/// A bridge whose config file names one target `t` (an echo service),
/// and a client of it.
struct Watched {
    echo: EchoService,
    /// The file's text.
    good: String,
    config: TempConfig,
    bridge: BridgeProcess,
    client: Dealer,
}

impl Watched {
    fn start() -> Watched {
        let echo = EchoService::start(None).unwrap();
        let good = format!("[targets.t]\nendpoint = \"{}\"\n", echo.endpoint);
        let config = TempConfig::new(&good);
        let bridge = bridge(&[config.flag()]);
        let client = Dealer::connect(&bridge.frontend);
        Watched {
            echo,
            good,
            config,
            bridge,
            client,
        }
    }
}

#[test]
fn sighup_adds_and_repoints_targets_without_dropping_requests_in_flight() {
    let (_slow, slow_port) = py_service("slow", 0);
    let fresh = EchoService::start(Some("fresh")).unwrap();
    let other = EchoService::start(Some("other")).unwrap();
    let config = TempConfig::new(&format!(
        "[targets.work]\nendpoint = \"tcp://127.0.0.1:{slow_port}\"\n"
    ));
    let bridge = bridge(&[config.flag()]);
    let client = Dealer::connect(&bridge.frontend);
    // Five requests of 200 ms each, in flight on a one-at-a-time backend.
    for i in 0..5u8 {
        client.send(&[b"work", b"sleep:0.2", &[i]]);
    }
    // All five reached the bridge (a count that only goes up: in_flight
    // falls again after 200 ms, which a slow poll could miss).
    assert!(wait_until(Duration::from_secs(5), || {
        status(&bridge.frontend)["targets"]["work"]["requests_total"] == 5
    }));

    // Re-point `work` to another service and add `extra`.
    std::fs::write(
        &config.0,
        format!(
            "[targets.work]\nendpoint = \"{}\"\n[targets.extra]\nendpoint = \"{}\"\n",
            fresh.endpoint, other.endpoint
        ),
    )
    .unwrap();
    bridge.signal("HUP").unwrap();
    assert!(reloaded(&bridge, 1), "{}", bridge.log().join("\n"));
    assert!(bridge.wait_for_log("trigger=\"SIGHUP\"", Duration::from_secs(5)));

    let helper = Dealer::connect(&bridge.frontend);
    assert_eq!(
        helper.call(&[b"work", b"now"]),
        [b"fresh".to_vec(), b"now".to_vec()]
    );
    assert_eq!(
        helper.call(&[b"extra", b"hi"]),
        [b"other".to_vec(), b"hi".to_vec()]
    );
    // Every request sent before the reload is answered by the old backend.
    let mut answered: Vec<u8> = (0..5)
        .map(|_| {
            let reply = client.recv(Duration::from_secs(10)).expect("an answer");
            assert_eq!(reply[..2], [b"slow".to_vec(), b"sleep:0.2".to_vec()]);
            reply[2][0]
        })
        .collect();
    answered.sort();
    assert_eq!(answered, [0, 1, 2, 3, 4]);
    assert!(bridge.wait_for_log("retired target closed", Duration::from_secs(5)));
    let doc = status(&bridge.frontend);
    // The file watcher may have read the change a moment before SIGHUP.
    assert!(doc["config_generation"].as_u64().unwrap() >= 1);
    assert_eq!(doc["targets"]["work"]["endpoint"], fresh.endpoint.as_str());
}

#[test]
fn an_invalid_file_is_rejected_by_key_and_a_changed_file_reloads_by_itself() {
    let Watched {
        echo: _echo,
        good,
        config,
        bridge,
        client,
    } = Watched::start();

    std::fs::write(&config.0, format!("max_framez = 4\n{good}")).unwrap();
    bridge.signal("HUP").unwrap();
    let (_, event) = bridge
        .wait_for_event(Duration::from_secs(5), |e| e["event"] == "reload_rejected")
        .expect("the reload is rejected");
    assert_eq!(event["key"], "max_framez");
    assert!(bridge.wait_for_log("max_framez", Duration::from_secs(1)));
    assert_eq!(client.call(&[b"t", b"still"]), [b"still".to_vec()]);
    assert_eq!(status(&bridge.frontend)["config_generation"], 0);

    // No signal: the file changing is enough. A port cannot change while
    // running, and says so; a limit can.
    std::fs::write(
        &config.0,
        format!("max_frames = 2\nsecondary_port = 5999\n{good}"),
    )
    .unwrap();
    let (_, event) = bridge
        .wait_for_event(Duration::from_secs(5), |e| e["event"] == "reloaded")
        .expect("the changed file is reloaded");
    assert_eq!(
        event["restart_needed"],
        serde_json::json!(["secondary_port"])
    );
    let (code, _) = error_of(&client.call(&[b"t", b"1", b"2"]));
    assert_eq!(code, "bad_frames", "the new max_frames applies");
}

/// Log lines of refused reloads that contain `needle`, by `trigger`.
fn refusals(bridge: &BridgeProcess, needle: &str, trigger: &str) -> usize {
    bridge
        .log()
        .iter()
        .filter(|l| {
            l.contains("config reload rejected")
                && l.contains(needle)
                && l.contains(&format!("trigger=\"{trigger}\""))
        })
        .count()
}

/// Rewrite the file, send SIGHUP, and wait until that reload is refused by
/// `key` (with `needle` in its log line); the bridge must still answer.
fn refused_by_sighup(
    bridge: &BridgeProcess,
    config: &TempConfig,
    client: &Dealer,
    text: &str,
    needle: &str,
) {
    let before = refusals(bridge, needle, "SIGHUP");
    std::fs::write(&config.0, text).unwrap();
    bridge.signal("HUP").unwrap();
    assert!(
        wait_until(Duration::from_secs(5), || refusals(
            bridge, needle, "SIGHUP"
        ) > before),
        "{text:?} refused on SIGHUP: {}",
        bridge.log().join("\n")
    );
    assert_eq!(
        client.call(&[b"t", b"still"]),
        [b"still".to_vec()],
        "{text:?}"
    );
}

#[test]
fn values_the_clock_cannot_take_are_refused_by_a_live_reload_and_the_bridge_keeps_answering() {
    let echo = EchoService::start(None).unwrap();
    // The heartbeat timing in the file, not in flags (which would win).
    let file = |line: &str| {
        let mut keys = vec!["heartbeat_interval = 0.05", "heartbeat_timeout = 0.2"];
        keys.retain(|k| k.split(' ').next() != line.split(' ').next());
        format!(
            "{}\n{line}\n[targets.t]\nendpoint = \"{}\"\n",
            keys.join("\n"),
            echo.endpoint
        )
    };
    let config = TempConfig::new(&file(""));
    let mut args: Vec<String> = lone_bridge_flags()
        .into_iter()
        .filter(|f| !f.starts_with("--heartbeat-"))
        .collect();
    args.extend([
        "--main-pc-addr=".into(),
        "--pc2-addr=".into(),
        config.flag(),
    ]);
    let bridge = BridgeProcess::spawn(exe(), &args).expect("bridge starts");
    let client = Dealer::connect(&bridge.frontend);
    for (line, key) in [
        ("heartbeat_timeout = 1e19", "heartbeat_timeout"),
        ("request_timeout = 1e19", "request_timeout"),
        ("drain_timeout = 1e19", "drain_timeout"),
        (
            "rate_limit_per_client = 1e-300\nrate_limit_per_client_burst = 1",
            "rate_limit_per_client",
        ),
        (
            "rate_limit_global = 1e-300\nrate_limit_global_burst = 1",
            "rate_limit_global",
        ),
    ] {
        refused_by_sighup(
            &bridge,
            &config,
            &client,
            &file(line),
            &format!("key={key}"),
        );
        assert!(bridge
            .events()
            .iter()
            .any(|e| e["event"] == "reload_rejected" && e["key"] == key));
    }
    let text = format!("{}request_timeout = 1e19\n", file(""));
    let key = "targets.t.request_timeout";
    refused_by_sighup(&bridge, &config, &client, &text, &format!("key={key}"));
    // Every request after each refusal was answered: nothing applied.
    let doc = status(&bridge.frontend);
    assert_eq!(doc["config_generation"], 0, "{doc}");
    assert_eq!(doc["targets"]["t"]["replies_total"], 6, "{doc}");
}

#[test]
fn an_emptied_file_or_one_without_targets_is_not_applied_by_the_watcher_nor_by_sighup() {
    let Watched {
        echo,
        good: _,
        config,
        bridge,
        client,
    } = Watched::start();
    for empty in ["", "# all commented out\n\n# [targets.t]\n"] {
        // Saved: the watcher reads it once it holds still, and refuses it.
        let before = refusals(&bridge, "has no keys", "the config file changed");
        std::fs::write(&config.0, empty).unwrap();
        assert!(
            wait_until(Duration::from_secs(5), || refusals(
                &bridge,
                "has no keys",
                "the config file changed"
            ) > before),
            "{empty:?} refused by the watcher: {}",
            bridge.log().join("\n")
        );
        assert_eq!(client.call(&[b"t", b"kept"]), [b"kept".to_vec()]);
        // SIGHUP reads it again, and refuses it again.
        refused_by_sighup(&bridge, &config, &client, empty, "has no keys");
    }
    assert!(bridge
        .events()
        .iter()
        .any(|e| e["event"] == "reload_rejected"
            && e["message"].as_str().unwrap().contains("has no keys")));

    refused_by_sighup(
        &bridge,
        &config,
        &client,
        "log_level = \"debug\"\n",
        "key=targets",
    );
    let doc = status(&bridge.frontend);
    assert_eq!(doc["config_generation"], 0, "{doc}");
    assert_eq!(
        doc["targets"]["t"]["endpoint"],
        echo.endpoint.as_str(),
        "{doc}"
    );
}

#[test]
fn a_reload_refused_when_a_target_cannot_be_opened_changes_nothing() {
    let Watched {
        echo,
        good: _,
        config,
        bridge,
        client,
    } = Watched::start();
    // Valid by the config's rules, but libzmq refuses to connect to it.
    let text = "max_frames = 2\n[targets.t]\nendpoint = \"tcp://-:1\"\n";
    refused_by_sighup(&bridge, &config, &client, text, "key=targets.t");
    let doc = status(&bridge.frontend);
    assert_eq!(doc["config_generation"], 0, "{doc}");
    assert_eq!(
        doc["targets"]["t"]["endpoint"],
        echo.endpoint.as_str(),
        "{doc}"
    );
    assert_eq!(
        client.call(&[b"t", b"1", b"2", b"3"]),
        [b"1".to_vec(), b"2".to_vec(), b"3".to_vec()],
        "max_frames is not applied either"
    );
}

#[test]
fn a_config_path_that_becomes_a_fifo_is_refused_the_bridge_relays_on_and_stops_on_sigterm() {
    let Watched {
        echo: _echo,
        good: _,
        config,
        mut bridge,
        client,
    } = Watched::start();
    std::fs::remove_file(&config.0).unwrap();
    let made = std::process::Command::new("mkfifo")
        .arg(&config.0)
        .status()
        .unwrap();
    assert!(made.success());
    let rejected = |bridge: &BridgeProcess| {
        bridge
            .events()
            .iter()
            .filter(|e| {
                e["event"] == "reload_rejected"
                    && e["message"].as_str().unwrap_or("").contains("is a FIFO")
            })
            .count()
    };
    // The file watcher sees it (no signal), and refuses it at once.
    assert!(
        wait_until(Duration::from_secs(10), || rejected(&bridge) == 1),
        "{}",
        bridge.log().join("\n")
    );
    assert!(bridge.wait_for_log("config reload rejected", Duration::from_secs(1)));
    assert_eq!(client.call(&[b"t", b"still"]), [b"still".to_vec()]);
    // SIGHUP: the same.
    bridge.signal("HUP").unwrap();
    assert!(wait_until(Duration::from_secs(5), || rejected(&bridge) == 2));
    assert_eq!(client.call(&[b"t", b"again"]), [b"again".to_vec()]);
    assert_eq!(status(&bridge.frontend)["config_generation"], 0);
    bridge.signal("TERM").unwrap();
    let exit = bridge.wait_exit(Duration::from_secs(10));
    assert!(exit.is_some_and(|e| e.success()), "{exit:?}");
}
