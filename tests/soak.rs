//! A short soak: a pair under steady load for a minute, with faults of the
//! active every few seconds (kill -9, SIGSTOP+SIGCONT, SIGTERM, restarts).

use crate::support::*;
use std::time::Duration;
use zbridge_lab::soak::Soak;

#[test]
fn a_minute_of_random_faults_loses_nothing_and_never_has_two_actives() {
    let soak = Soak {
        duration: Duration::from_secs(60),
        rate: 200.0,
        fault_every: (Duration::from_secs(3), Duration::from_secs(6)),
        heartbeat_interval: INTERVAL,
        heartbeat_timeout: TIMEOUT,
        seed: 11,
    };
    let report = soak.run(exe(), &mut |_| {}).unwrap();
    let doc = report.json();
    assert!(report.faults.len() >= 5, "{doc}");
    assert!(report.failovers >= 1, "{doc}");
    assert_eq!(report.client.lost, 0, "{doc}");
    assert_eq!(report.client.ok, report.client.sent, "{doc}");
    assert_eq!(report.split_brain, 0, "{doc}");
    // Memory and descriptors stay flat (restarted instances included).
    let (rss_start, rss_end) = (
        doc["rss_start_kb"].as_f64().unwrap(),
        doc["rss_end_kb"].as_f64().unwrap(),
    );
    assert!(rss_end <= rss_start * 1.5, "{doc}");
    let (fds_start, fds_end) = (
        doc["fds_start"].as_u64().unwrap(),
        doc["fds_end"].as_u64().unwrap(),
    );
    assert!(fds_end <= fds_start + 20, "{doc}");
}
