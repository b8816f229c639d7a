//! Transition tests: (state, event, time) -> (state, effects).

use super::*;

const TIMEOUT: Duration = Duration::from_millis(300);
const FAST: Duration = Duration::from_millis(20);

fn settings(node: Node, preempt: bool) -> Settings {
    Settings {
        node,
        preempt,
        same_host: true,
        heartbeat_timeout: TIMEOUT,
        fast_retry: FAST,
        leave_window: Duration::from_secs(2),
    }
}

fn ms(t0: Instant, ms: u64) -> Instant {
    t0 + Duration::from_millis(ms)
}

fn peer(role: Role, node: Node, epoch: u64, state: State) -> Event {
    Event::Heard(Peer {
        role,
        node,
        epoch,
        state,
    })
}

fn changed(from: Phase, to: Phase, reason: Reason, epoch: u64) -> Effect {
    Effect::Changed {
        from,
        to,
        reason,
        epoch,
    }
}

/// A secondary that holds its port and has heard an active primary at t0.
fn passive_secondary(t0: Instant) -> Machine {
    let (mut m, effects) = Machine::new(settings(Node::Secondary, false), t0);
    assert_eq!(effects, [Effect::Bind(Port::Secondary)]);
    assert_eq!(m.step(t0, Event::Bound(Port::Secondary, true)), []);
    m.step(t0, peer(Role::Active, Node::Primary, 1, State::Running));
    m
}

/// A primary that became active at start-up.
fn active_primary(t0: Instant, preempt: bool) -> Machine {
    let (mut m, effects) = Machine::new(settings(Node::Primary, preempt), t0);
    assert_eq!(effects, []);
    assert_eq!(m.phase(), Phase::Listening);
    assert_eq!(m.step(ms(t0, 299), Event::Tick), []);
    assert_eq!(
        m.step(ms(t0, 300), Event::Tick),
        [Effect::Bind(Port::Primary)]
    );
    assert_eq!(
        m.step(ms(t0, 301), Event::Bound(Port::Primary, true)),
        [
            changed(Phase::Listening, Phase::Active, Reason::NoActivePeer, 1),
            Effect::PublishNow
        ]
    );
    m
}

#[test]
fn a_takeover_carries_an_epoch_above_any_the_peer_announced() {
    // The primary became active after hearing a passive peer and was
    // killed at once: its new epoch went out with its role change.
    let t0 = Instant::now();
    let (mut primary, _) = Machine::new(settings(Node::Primary, false), t0);
    let effects = primary.step(t0, peer(Role::Passive, Node::Secondary, 0, State::Running));
    assert_eq!(effects, [Effect::Bind(Port::Primary)]);
    let effects = primary.step(t0, Event::Bound(Port::Primary, true));
    assert_eq!(effects.last(), Some(&Effect::PublishNow));
    assert_eq!((primary.role(), primary.epoch()), (Role::Active, 1));

    let mut secondary = passive_secondary(t0);
    secondary.step(
        ms(t0, 1),
        peer(Role::Active, Node::Primary, 1, State::Running),
    );
    secondary.step(ms(t0, 301), Event::Tick);
    secondary.step(ms(t0, 302), Event::Bound(Port::Primary, true));
    assert_eq!(secondary.epoch(), 2);
}

#[test]
fn a_primary_with_no_peer_takes_the_primary_port_after_listening() {
    let t0 = Instant::now();
    let m = active_primary(t0, false);
    assert_eq!(m.role(), Role::Active);
    assert_eq!(m.epoch(), 1);
    assert_eq!(m.failovers(), 0, "start-up is not a failover");
}

#[test]
fn a_primary_that_hears_an_active_peer_joins_as_passive() {
    let t0 = Instant::now();
    let (mut m, _) = Machine::new(settings(Node::Primary, false), t0);
    assert_eq!(
        m.step(
            ms(t0, 50),
            peer(Role::Active, Node::Secondary, 4, State::Running)
        ),
        [
            changed(Phase::Listening, Phase::Passive, Reason::PeerActive, 4),
            Effect::PublishNow,
            Effect::Bind(Port::Secondary)
        ]
    );
    // No failback: the active peer keeps beating, nothing happens.
    m.step(ms(t0, 51), Event::Bound(Port::Secondary, true));
    for t in (100..2000).step_by(100) {
        assert_eq!(
            m.step(
                ms(t0, t),
                peer(Role::Active, Node::Secondary, 4, State::Running)
            ),
            []
        );
        assert_eq!(m.step(ms(t0, t + 1), Event::Tick), []);
    }
}

#[test]
fn a_primary_hearing_a_passive_peer_does_not_wait() {
    let t0 = Instant::now();
    let (mut m, _) = Machine::new(settings(Node::Primary, false), t0);
    assert_eq!(
        m.step(
            ms(t0, 10),
            peer(Role::Passive, Node::Secondary, 0, State::Running)
        ),
        [Effect::Bind(Port::Primary)]
    );
}

#[test]
fn a_primary_whose_port_is_held_joins_as_passive() {
    let t0 = Instant::now();
    let (mut m, _) = Machine::new(settings(Node::Primary, false), t0);
    m.step(ms(t0, 300), Event::Tick);
    assert_eq!(
        m.step(ms(t0, 301), Event::Bound(Port::Primary, false)),
        [
            changed(Phase::Listening, Phase::Passive, Reason::PortHeld, 0),
            Effect::PublishNow,
            Effect::Bind(Port::Secondary)
        ]
    );
}

#[test]
fn a_passive_fails_over_after_heartbeat_timeout_of_silence() {
    let t0 = Instant::now();
    let mut m = passive_secondary(t0);
    assert_eq!(m.next_deadline(), Some(ms(t0, 300)));
    assert_eq!(m.step(ms(t0, 299), Event::Tick), []);
    assert_eq!(
        m.step(ms(t0, 300), Event::Tick),
        [Effect::Bind(Port::Primary)]
    );
    assert_eq!(
        m.step(ms(t0, 301), Event::Bound(Port::Primary, true)),
        [
            changed(Phase::Passive, Phase::Active, Reason::PeerSilent, 2),
            Effect::PublishNow,
            Effect::Notify,
        ]
    );
    assert_eq!(m.failovers(), 1);
}

#[test]
fn heartbeats_keep_the_passive_passive() {
    let t0 = Instant::now();
    let mut m = passive_secondary(t0);
    for t in (250..5000).step_by(250) {
        m.step(
            ms(t0, t),
            peer(Role::Active, Node::Primary, 1, State::Running),
        );
        assert_eq!(m.step(ms(t0, t + 249), Event::Tick), []);
    }
}

#[test]
fn a_hung_active_holding_the_port_is_retried_every_timeout() {
    let t0 = Instant::now();
    let mut m = passive_secondary(t0);
    m.step(ms(t0, 300), Event::Tick);
    assert_eq!(
        m.step(ms(t0, 301), Event::Bound(Port::Primary, false)),
        [Effect::BindFailed {
            port: Port::Primary,
            silent_for: Duration::from_millis(301)
        }]
    );
    assert_eq!(m.phase(), Phase::Passive);
    assert_eq!(m.step(ms(t0, 600), Event::Tick), []);
    assert_eq!(
        m.step(ms(t0, 601), Event::Tick),
        [Effect::Bind(Port::Primary)]
    );
    assert_eq!(m.bind_failures(), 1);
    // The hung active wakes up and beats again: no takeover.
    m.step(ms(t0, 602), Event::Bound(Port::Primary, false));
    m.step(
        ms(t0, 650),
        peer(Role::Active, Node::Primary, 1, State::Running),
    );
    assert_eq!(m.step(ms(t0, 902), Event::Tick), []);
}

#[test]
fn a_leaving_active_is_taken_over_at_once_with_fast_retries() {
    let t0 = Instant::now();
    let mut m = passive_secondary(t0);
    assert_eq!(
        m.step(
            ms(t0, 10),
            peer(Role::Active, Node::Primary, 1, State::Leaving)
        ),
        [Effect::Bind(Port::Primary)]
    );
    // Still draining: the port is held for a moment.
    m.step(ms(t0, 11), Event::Bound(Port::Primary, false));
    assert_eq!(m.next_deadline(), Some(ms(t0, 31)));
    assert_eq!(
        m.step(ms(t0, 31), Event::Tick),
        [Effect::Bind(Port::Primary)]
    );
    let effects = m.step(ms(t0, 32), Event::Bound(Port::Primary, true));
    assert_eq!(
        effects[0],
        changed(Phase::Passive, Phase::Active, Reason::PeerLeaving, 2)
    );
}

#[test]
fn two_actives_resolve_by_epoch_and_a_tie_keeps_the_primary() {
    let t0 = Instant::now();
    let mut primary = active_primary(t0, false);
    assert_eq!(
        primary.step(
            ms(t0, 400),
            peer(Role::Active, Node::Secondary, 1, State::Running)
        ),
        []
    );
    assert_eq!(
        primary.step(
            ms(t0, 500),
            peer(Role::Active, Node::Secondary, 2, State::Running)
        ),
        [
            changed(Phase::Active, Phase::Passive, Reason::HigherEpoch, 2),
            Effect::PublishNow,
            Effect::Drain(Port::Primary),
            Effect::Bind(Port::Secondary)
        ]
    );
    assert_eq!(primary.step_downs(), 1);

    let mut secondary = passive_secondary(t0);
    secondary.step(ms(t0, 300), Event::Tick);
    secondary.step(ms(t0, 301), Event::Bound(Port::Primary, true));
    assert_eq!(secondary.epoch(), 2);
    let effects = secondary.step(
        ms(t0, 400),
        peer(Role::Active, Node::Primary, 2, State::Running),
    );
    assert_eq!(
        effects[0],
        changed(Phase::Active, Phase::Passive, Reason::HigherEpoch, 2)
    );
}

#[test]
fn preempt_hands_the_role_back_to_the_primary_node() {
    let t0 = Instant::now();
    for preempt in [false, true] {
        let (mut m, _) = Machine::new(settings(Node::Secondary, preempt), t0);
        m.step(t0, Event::Bound(Port::Secondary, true));
        m.step(ms(t0, 300), Event::Tick);
        m.step(ms(t0, 301), Event::Bound(Port::Primary, true));
        m.step(ms(t0, 302), Event::Released(Port::Secondary));
        let effects = m.step(
            ms(t0, 400),
            peer(Role::Passive, Node::Primary, 0, State::Running),
        );
        if !preempt {
            assert_eq!(effects, [], "no failback without preempt");
            continue;
        }
        assert_eq!(
            effects,
            [
                changed(Phase::Active, Phase::Passive, Reason::Preempt, 1),
                Effect::PublishNow,
                Effect::Drain(Port::Primary),
                Effect::Bind(Port::Secondary)
            ]
        );
        assert_eq!(m.state(), State::Handover);
        // The primary still holds the secondary port for a moment.
        m.step(ms(t0, 401), Event::Bound(Port::Secondary, false));
        assert_eq!(
            m.step(ms(t0, 421), Event::Tick),
            [Effect::Bind(Port::Secondary)]
        );
        m.step(ms(t0, 450), Event::Released(Port::Primary));
        assert_eq!(m.state(), State::Running);
    }
    // The primary's side: a handover heartbeat means "take it now".
    let (mut primary, _) = Machine::new(settings(Node::Primary, true), t0);
    primary.step(t0, peer(Role::Active, Node::Secondary, 1, State::Running));
    primary.step(t0, Event::Bound(Port::Secondary, true));
    assert_eq!(
        primary.step(
            ms(t0, 100),
            peer(Role::Passive, Node::Secondary, 1, State::Handover)
        ),
        [Effect::Bind(Port::Primary)]
    );
}

/// The secondary node after a takeover on one host: it holds both ports.
fn active_secondary_on_both_ports(t0: Instant, preempt: bool) -> Machine {
    let (mut m, _) = Machine::new(settings(Node::Secondary, preempt), t0);
    m.step(t0, Event::Bound(Port::Secondary, true));
    m.step(ms(t0, 300), Event::Tick);
    let effects = m.step(ms(t0, 301), Event::Bound(Port::Primary, true));
    assert!(
        !effects.iter().any(|e| matches!(e, Effect::Drain(_))),
        "both ports keep relaying after a takeover: {effects:?}"
    );
    m
}

#[test]
fn after_a_takeover_the_secondary_port_is_released_once_the_peer_returns() {
    let t0 = Instant::now();
    let mut m = active_secondary_on_both_ports(t0, false);
    let back = peer(Role::Passive, Node::Primary, 0, State::Running);
    assert_eq!(m.step(ms(t0, 350), back), [Effect::Drain(Port::Secondary)]);
    assert_eq!(m.step(ms(t0, 450), back), [], "asked once");
    assert_eq!(m.step(ms(t0, 500), Event::Released(Port::Secondary)), []);
    assert_eq!(m.phase(), Phase::Active);
    assert_eq!(m.step(ms(t0, 550), back), [], "nothing left to release");
}

#[test]
fn preempt_hands_the_primary_port_back_and_keeps_serving_on_the_secondary() {
    let t0 = Instant::now();
    let mut m = active_secondary_on_both_ports(t0, true);
    let effects = m.step(
        ms(t0, 350),
        peer(Role::Passive, Node::Primary, 0, State::Running),
    );
    assert!(
        effects.contains(&Effect::Drain(Port::Primary)),
        "{effects:?}"
    );
    assert!(!effects.contains(&Effect::Drain(Port::Secondary)));
    assert!(
        !effects.contains(&Effect::Bind(Port::Secondary)),
        "still held"
    );
    assert_eq!(m.phase(), Phase::Passive);
}

#[test]
fn a_closed_heartbeat_connection_on_one_host_tries_the_port_at_once() {
    let t0 = Instant::now();
    let mut m = passive_secondary(t0);
    // The active died: its port is free.
    assert_eq!(
        m.step(ms(t0, 5), Event::PeerDisconnected),
        [Effect::Bind(Port::Primary)]
    );
    assert_eq!(
        m.step(ms(t0, 6), Event::Bound(Port::Primary, true))[0],
        changed(Phase::Passive, Phase::Active, Reason::PeerDied, 2)
    );
    // Its last heartbeat is recent, but it is dead: not alive (the status
    // says redundancy degraded) until it is heard again.
    assert!(!m.peer_alive(ms(t0, 7)));
    m.step(
        ms(t0, 50),
        peer(Role::Passive, Node::Primary, 2, State::Running),
    );
    assert!(m.peer_alive(ms(t0, 51)));
    // Something else closed the connection: the port is held. No alarm,
    // nothing counted; the port is looked at again soon, and the timeout
    // still runs from the last heartbeat.
    let mut m = passive_secondary(t0);
    m.step(ms(t0, 5), Event::PeerDisconnected);
    assert_eq!(m.step(ms(t0, 6), Event::Bound(Port::Primary, false)), []);
    assert_eq!(m.bind_failures(), 0);
    assert_eq!(m.next_deadline(), Some(ms(t0, 15)));
    assert_eq!(m.phase(), Phase::Passive);
}

/// A passive secondary at the default 3 s timeout, on one host or two,
/// that has just heard a running active.
fn watching_an_active(t0: Instant, same_host: bool) -> Machine {
    let settings = Settings {
        same_host,
        heartbeat_timeout: Duration::from_secs(3),
        ..settings(Node::Secondary, false)
    };
    let (mut m, _) = Machine::new(settings, t0);
    m.step(t0, Event::Bound(Port::Secondary, true));
    m.step(t0, peer(Role::Active, Node::Primary, 1, State::Running));
    m
}

/// A killed process's sockets close one after another: its heartbeat
/// connection can close while its frontend still listens. The proof is
/// tried again, 10, 20, 40 ... 250 ms apart, until it holds (a takeover
/// on the kernel's word, long before the timeout) or the active is heard.
#[test]
fn a_failed_proof_of_death_is_tried_again_until_the_active_is_heard() {
    let t0 = Instant::now();
    // One host: the port, still held, then free.
    let mut m = watching_an_active(t0, true);
    assert_eq!(
        m.step(ms(t0, 5), Event::PeerDisconnected),
        [Effect::Bind(Port::Primary)]
    );
    assert_eq!(m.step(ms(t0, 6), Event::Bound(Port::Primary, false)), []);
    let mut looks = Vec::new();
    for t in 7..200 {
        if m.next_deadline() == Some(ms(t0, t)) {
            assert_eq!(
                m.step(ms(t0, t), Event::Tick),
                [Effect::Bind(Port::Primary)]
            );
            looks.push(t);
            if t < 100 {
                assert_eq!(m.step(ms(t0, t), Event::Bound(Port::Primary, false)), []);
            }
        }
    }
    assert_eq!(looks, [15, 35, 75, 155]);
    assert_eq!(m.bind_failures(), 0);
    assert_eq!(
        m.step(ms(t0, 156), Event::Bound(Port::Primary, true))[0],
        changed(Phase::Passive, Phase::Active, Reason::PeerDied, 2)
    );
    assert_eq!(m.next_deadline(), None);

    // Two hosts: a probe each time, and none once the active is heard.
    let mut m = watching_an_active(t0, false);
    assert_eq!(
        m.step(ms(t0, 5), Event::PeerDisconnected),
        [Effect::ProbePeer]
    );
    assert_eq!(m.step(ms(t0, 15), Event::Tick), [Effect::ProbePeer]);
    assert_eq!(m.next_deadline(), Some(ms(t0, 35)));
    m.step(
        ms(t0, 20),
        peer(Role::Active, Node::Primary, 1, State::Running),
    );
    assert_eq!(m.next_deadline(), Some(ms(t0, 3020)));
    assert_eq!(m.step(ms(t0, 35), Event::Tick), []);

    // The gap stops growing at 250 ms, and the looks stop with the
    // timeout (the silence takes over from there).
    let mut m = watching_an_active(t0, false);
    m.step(t0, Event::PeerDisconnected);
    let mut gaps = Vec::new();
    let mut last = t0;
    while let Some(at) = m.next_deadline().filter(|&at| at < ms(t0, 3000)) {
        assert_eq!(m.step(at, Event::Tick), [Effect::ProbePeer]);
        gaps.push((at - last).as_millis());
        last = at;
    }
    assert_eq!(gaps[..6], [10, 20, 40, 80, 160, 250]);
    assert!(gaps[6..].iter().all(|&g| g == 250), "{gaps:?}");
    assert_eq!(m.next_deadline(), Some(ms(t0, 3000)));
}

#[test]
fn a_closed_heartbeat_connection_on_two_hosts_asks_for_a_probe() {
    let t0 = Instant::now();
    let (mut m, _) = Machine::new(
        Settings {
            same_host: false,
            ..settings(Node::Secondary, false)
        },
        t0,
    );
    m.step(t0, Event::Bound(Port::Secondary, true));
    m.step(t0, peer(Role::Active, Node::Primary, 1, State::Running));
    assert_eq!(
        m.step(ms(t0, 5), Event::PeerDisconnected),
        [Effect::ProbePeer]
    );
    // The frontend still listens: no answer, nothing changes.
    assert_eq!(m.step(ms(t0, 10), Event::Tick), []);
    // Refused: the process is gone.
    assert_eq!(
        m.step(ms(t0, 20), Event::PeerDown),
        [Effect::Bind(Port::Primary)]
    );
    assert_eq!(
        m.step(ms(t0, 21), Event::Bound(Port::Primary, true))[0],
        changed(Phase::Passive, Phase::Active, Reason::PeerDied, 2)
    );
}

#[test]
fn a_closed_connection_is_no_proof_without_a_live_active_to_lose() {
    let t0 = Instant::now();
    // The peer was passive: there is no active to replace.
    let (mut m, _) = Machine::new(settings(Node::Secondary, false), t0);
    m.step(t0, Event::Bound(Port::Secondary, true));
    m.step(t0, peer(Role::Passive, Node::Primary, 1, State::Running));
    assert_eq!(m.step(ms(t0, 5), Event::PeerDisconnected), []);
    assert_eq!(m.step(ms(t0, 5), Event::PeerDown), []);
    // An active hears its passive peer's connection close: nothing to do.
    let mut m = active_primary(t0, false);
    m.step(
        ms(t0, 310),
        peer(Role::Passive, Node::Secondary, 1, State::Running),
    );
    assert_eq!(m.step(ms(t0, 320), Event::PeerDisconnected), []);
    // The active was already silent past the timeout: the timer handles it.
    let mut m = passive_secondary(t0);
    assert_eq!(m.step(ms(t0, 400), Event::PeerDisconnected), []);
}

#[test]
fn a_leaving_peer_that_still_holds_its_port_is_no_alarm() {
    let t0 = Instant::now();
    let mut m = passive_secondary(t0);
    m.step(
        ms(t0, 10),
        peer(Role::Active, Node::Primary, 1, State::Leaving),
    );
    for t in [11, 31, 51] {
        assert_eq!(m.step(ms(t0, t), Event::Bound(Port::Primary, false)), []);
        assert_eq!(
            m.step(ms(t0, t + 20), Event::Tick),
            [Effect::Bind(Port::Primary)]
        );
    }
    assert_eq!(m.bind_failures(), 0);
}

#[test]
fn an_active_has_no_secondary_retry_deadline() {
    let t0 = Instant::now();
    let (mut m, _) = Machine::new(settings(Node::Primary, false), t0);
    m.step(t0, peer(Role::Active, Node::Secondary, 1, State::Running));
    m.step(t0, Event::Bound(Port::Secondary, false));
    assert_eq!(
        m.next_deadline(),
        Some(ms(t0, 20)),
        "retrying the secondary port"
    );
    m.step(
        ms(t0, 10),
        peer(Role::Active, Node::Secondary, 1, State::Leaving),
    );
    m.step(ms(t0, 11), Event::Bound(Port::Primary, true));
    assert_eq!(m.phase(), Phase::Active);
    assert_eq!(m.next_deadline(), None, "nothing to wait for: no busy loop");
}

#[test]
fn stop_publishes_leaving_drains_and_exits_when_released() {
    let t0 = Instant::now();
    let mut m = active_primary(t0, false);
    assert_eq!(
        m.step(ms(t0, 500), Event::Stop),
        [
            changed(Phase::Active, Phase::Stopping, Reason::Stop, 1),
            Effect::PublishNow,
            Effect::Drain(Port::Primary)
        ]
    );
    assert_eq!(m.state(), State::Leaving);
    assert_eq!(
        m.role(),
        Role::Active,
        "the leaving heartbeat comes from the active"
    );
    assert_eq!(
        m.step(ms(t0, 501), Event::Stop),
        [],
        "a second stop changes nothing here"
    );
    assert_eq!(
        m.step(ms(t0, 600), Event::Released(Port::Primary)),
        [Effect::Exit]
    );
}

#[test]
fn a_stop_during_start_up_exits_once_the_pending_bind_is_undone() {
    let t0 = Instant::now();
    let (mut m, _) = Machine::new(settings(Node::Primary, false), t0);
    m.step(ms(t0, 300), Event::Tick);
    m.step(ms(t0, 301), Event::Stop);
    assert_eq!(
        m.step(ms(t0, 302), Event::Bound(Port::Primary, true)),
        [Effect::Drain(Port::Primary)]
    );
    assert_eq!(
        m.step(ms(t0, 303), Event::Released(Port::Primary)),
        [Effect::Exit]
    );
}

/// Two machines on two hosts (no port lock to help them), wired through an
/// in-memory link with a fake clock; random crashes, restarts and graceful
/// stops of either node, and heartbeat connections closed by something
/// other than a death (a proxy, a restarted socket). The kernel's word
/// is modelled as it is: a crash closes the peer's heartbeat connection,
/// and a probe of its frontend is refused only while its process is gone.
mod simulation {
    use super::*;

    const STEP: Duration = Duration::from_millis(1);
    const INTERVAL: Duration = Duration::from_millis(100);

    struct Node_ {
        machine: Option<Machine>,
        next_beat: Instant,
        /// Ports being drained, released at this time.
        draining: Vec<(Port, Instant)>,
    }

    struct World {
        t0: Instant,
        now: Instant,
        nodes: [Node_; 2],
        /// Heartbeats in flight: (deliver at, to node, what).
        link: Vec<(Instant, usize, Peer)>,
        /// What the kernel tells a node: (deliver at, to node, event).
        kernel: Vec<(Instant, usize, Event)>,
        /// When an active died while its peer was a passive that heard it.
        died: Option<Instant>,
        rng: u64,
        /// Last time some node was active.
        last_active: Instant,
    }

    impl World {
        fn new(seed: u64) -> World {
            let t0 = Instant::now();
            let mut world = World {
                t0,
                now: t0,
                nodes: [0, 1].map(|_| Node_ {
                    machine: None,
                    next_beat: t0,
                    draining: Vec::new(),
                }),
                link: Vec::new(),
                kernel: Vec::new(),
                died: None,
                rng: seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1,
                last_active: t0,
            };
            world.start(0);
            world.start(1);
            world
        }

        fn random(&mut self, n: u64) -> u64 {
            self.rng ^= self.rng << 13;
            self.rng ^= self.rng >> 7;
            self.rng ^= self.rng << 17;
            self.rng % n
        }

        fn settings(i: usize) -> Settings {
            Settings {
                node: if i == 0 {
                    Node::Primary
                } else {
                    Node::Secondary
                },
                preempt: false,
                same_host: false,
                heartbeat_timeout: TIMEOUT,
                fast_retry: Duration::from_millis(10),
                leave_window: Duration::from_secs(1),
            }
        }

        fn start(&mut self, i: usize) {
            let (machine, effects) = Machine::new(Self::settings(i), self.now);
            self.nodes[i] = Node_ {
                machine: Some(machine),
                next_beat: self.now,
                draining: Vec::new(),
            };
            self.apply(i, effects);
        }

        fn beat(&mut self, i: usize) {
            let Some(m) = &self.nodes[i].machine else {
                return;
            };
            let peer = Peer {
                role: m.role(),
                node: m.node(),
                epoch: m.epoch(),
                state: m.state(),
            };
            self.link.push((self.now + STEP, 1 - i, peer));
            self.nodes[i].next_beat = self.now + INTERVAL;
        }

        fn apply(&mut self, i: usize, effects: Vec<Effect>) {
            let mut queue = effects;
            while !queue.is_empty() {
                let mut next = Vec::new();
                for effect in queue {
                    let now = self.now;
                    let Some(m) = self.nodes[i].machine.as_mut() else {
                        return;
                    };
                    match effect {
                        // Each host has its own ports: binding succeeds.
                        Effect::Bind(port) => next.extend(m.step(now, Event::Bound(port, true))),
                        Effect::Drain(port) => self.nodes[i].draining.push((port, now + 3 * STEP)),
                        Effect::PublishNow => self.beat(i),
                        Effect::Exit => self.nodes[i].machine = None,
                        // Refused only while no process of the peer runs.
                        Effect::ProbePeer if self.nodes[1 - i].machine.is_none() => {
                            self.kernel.push((now + STEP, i, Event::PeerDown));
                        }
                        Effect::ProbePeer
                        | Effect::Notify
                        | Effect::Changed { .. }
                        | Effect::BindFailed { .. } => {}
                    }
                }
                queue = next;
            }
        }

        fn step(&mut self) {
            self.now += STEP;
            let now = self.now;
            let (due, later): (Vec<_>, Vec<_>) =
                self.link.drain(..).partition(|(at, _, _)| *at <= now);
            self.link = later;
            let (told, later): (Vec<_>, Vec<_>) =
                self.kernel.drain(..).partition(|(at, _, _)| *at <= now);
            self.kernel = later;
            let heard = due
                .into_iter()
                .map(|(at, to, peer)| (at, to, Event::Heard(peer)));
            for (_, to, event) in heard.chain(told) {
                if let Some(m) = self.nodes[to].machine.as_mut() {
                    let effects = m.step(now, event);
                    self.apply(to, effects);
                }
            }
            for i in 0..2 {
                let released: Vec<Port> = self.nodes[i]
                    .draining
                    .iter()
                    .filter(|(_, at)| *at <= now)
                    .map(|(p, _)| *p)
                    .collect();
                self.nodes[i].draining.retain(|(_, at)| *at > now);
                for port in released {
                    if let Some(m) = self.nodes[i].machine.as_mut() {
                        let effects = m.step(now, Event::Released(port));
                        self.apply(i, effects);
                    }
                }
                if let Some(m) = self.nodes[i].machine.as_mut() {
                    let effects = m.step(now, Event::Tick);
                    self.apply(i, effects);
                }
                if self.nodes[i].machine.is_some() && now >= self.nodes[i].next_beat {
                    self.beat(i);
                }
            }
        }

        fn actives(&self) -> usize {
            self.nodes
                .iter()
                .filter(|n| {
                    n.machine
                        .as_ref()
                        .is_some_and(|m| m.phase() == Phase::Active)
                })
                .count()
        }

        fn fault(&mut self) {
            let i = self.random(2) as usize;
            match (self.random(4), self.nodes[i].machine.is_some()) {
                (0, true) => {
                    // kill -9: the process and its heartbeats are gone,
                    // and the kernel closes its connections.
                    let was_active = self.nodes[i]
                        .machine
                        .as_ref()
                        .is_some_and(|m| m.phase() == Phase::Active);
                    let now = self.now;
                    let watched = self.nodes[1 - i].machine.as_ref().is_some_and(|m| {
                        m.phase() == Phase::Passive
                            && m.peer_alive(now)
                            && m.peer().is_some_and(|(_, p)| p.role == Role::Active)
                    });
                    if was_active && watched {
                        self.died = Some(now);
                    }
                    self.nodes[i].machine = None;
                    self.link.retain(|(_, to, _)| *to == i);
                    self.kernel.retain(|(_, to, _)| *to != i);
                    self.kernel
                        .push((now + STEP, 1 - i, Event::PeerDisconnected));
                }
                (3, true) => {
                    // A heartbeat connection closed with both alive.
                    self.kernel
                        .push((self.now + STEP, i, Event::PeerDisconnected));
                }
                (1, true) => {
                    let now = self.now;
                    if let Some(m) = self.nodes[i].machine.as_mut() {
                        let effects = m.step(now, Event::Stop);
                        self.apply(i, effects);
                    }
                }
                (_, false) => self.start(i),
                _ => {}
            }
        }
    }

    #[test]
    fn never_two_actives_while_heartbeats_get_through_and_always_one_again() {
        for seed in 1..=40 {
            let mut world = World::new(seed);
            let mut next_fault = world.t0 + Duration::from_secs(2);
            while world.now < world.t0 + Duration::from_secs(60) {
                world.step();
                let actives = world.actives();
                assert!(
                    actives <= 1,
                    "seed {seed}: two actives at {:?}",
                    world.now - world.t0
                );
                let alive = world.nodes.iter().any(|n| n.machine.is_some());
                if actives == 1 || !alive {
                    world.last_active = world.now;
                }
                // Liveness: with a node up, an active within the listening
                // or failover timeout plus a heartbeat interval.
                assert!(
                    world.now - world.last_active <= TIMEOUT + INTERVAL + 10 * STEP,
                    "seed {seed}: no active for {:?} at {:?}",
                    world.now - world.last_active,
                    world.now - world.t0
                );
                // A death the kernel reported is taken over at once, not
                // at the timeout.
                if let Some(died) = world.died {
                    if actives == 1 {
                        world.died = None;
                    } else {
                        assert!(
                            world.now - died <= 10 * STEP,
                            "seed {seed}: no takeover {:?} after a kill -9 at {:?}",
                            world.now - died,
                            died - world.t0
                        );
                    }
                }
                if world.now >= next_fault {
                    world.fault();
                    next_fault = world.now + Duration::from_millis(200 + world.random(2000));
                }
            }
        }
    }
}

#[test]
fn a_secondary_port_held_by_a_draining_peer_is_reported_once_per_wait() {
    let t0 = Instant::now();
    let (mut m, _) = Machine::new(settings(Node::Primary, false), t0);
    m.step(t0, peer(Role::Active, Node::Secondary, 1, State::Running));
    let mut told = 0;
    for t in 0..5 {
        let effects = m.step(ms(t0, t * 20), Event::Bound(Port::Secondary, false));
        told += effects
            .iter()
            .filter(|e| matches!(e, Effect::BindFailed { .. }))
            .count();
        assert_eq!(
            m.step(ms(t0, t * 20 + 20), Event::Tick),
            [Effect::Bind(Port::Secondary)]
        );
    }
    assert_eq!(told, 1);
}
