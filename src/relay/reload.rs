//! What a reloaded config does to the running targets, as a pure diff: a
//! target is kept (same name, without regard to case, and same endpoint;
//! its timeout and breaker settings follow the new config), re-pointed (a
//! new DEALER; the old one is retired and stays until its requests are
//! answered), added, or removed (retired). [`Relay::reload`] asks the
//! loader to re-read the config (off the relay thread) and
//! [`Relay::apply_reload`] applies the diff: it opens the new DEALERs
//! first, so that a reload whose socket cannot open changes nothing.

use super::loader::Loaded;
use super::roles::settings;
use super::state::State;
use super::{Dealer, Events, Relay};
use crate::config;
use serde_json::json;
use std::time::Instant;
use tracing::{error, info, warn};

impl Relay {
    /// Ask for the config to be re-read, off the relay thread
    /// ([`super::loader`]); [`Relay::apply_reload`] applies it when read.
    pub(super) fn reload(&mut self, why: &'static str) {
        // What is read now need not be read again by the file watcher.
        self.watch.read(self.source.stamp());
        self.loader.ask(why);
    }

    /// Apply a config the loader has read: what can change while running.
    pub(super) fn apply_reload(&mut self, now: Instant, loaded: Loaded, events: Events) {
        let Loaded {
            why,
            coalesced,
            config,
        } = loaded;
        let new = match config.and_then(|new| new.replaces(&self.state.config).map(|()| new)) {
            Ok(config) => config,
            Err(e) => {
                error!(
                    key = %e.key,
                    error = %e,
                    trigger = why,
                    coalesced,
                    "config reload rejected: the running config stays"
                );
                events(json!({"event": "reload_rejected", "key": e.key, "message": e.message}));
                return;
            }
        };
        if let Some(clients) = &new.curve_clients {
            clients.log_refused();
        }
        let old = &self.state.config;
        let restart = old.restart_keys_changed(&new);
        for key in &restart {
            warn!(
                key,
                "changed in the config, but takes effect only after a restart"
            );
        }
        let new = old.with_restart_keys_of(new);
        // Targets: kept, re-pointed (a new dealer; the old one stays until
        // its requests are answered), added, removed. Nothing changes until
        // every new dealer is open: a refused reload leaves all as it was.
        let Plan { retired, added } = plan(&self.state, &new.targets);
        let mut opened = Vec::new();
        for target in added {
            match Dealer::open(&self.context, &new, target) {
                Ok(dealer) => opened.push((target, dealer)),
                Err(e) => {
                    let key = format!("targets.{}", target.name);
                    error!(
                        key = %key,
                        error = %e,
                        trigger = why,
                        "config reload rejected: the running config stays"
                    );
                    events(
                        json!({"event": "reload_rejected", "key": key, "message": e.to_string()}),
                    );
                    return;
                }
            }
        }
        (self.set_level)(new.log_level);
        if let Some(admission) = &self.admission {
            admission.set_allowed(new.curve_clients.as_ref());
        }
        self.heartbeats.set_interval(new.heartbeat_interval);
        self.machine.set_settings(settings(&new));
        for i in retired {
            self.state.retire(i);
        }
        self.state.set_config(new.clone(), now);
        for target in &new.targets {
            if let Some(i) = self.state.target_index(&target.name) {
                self.state.update_target(i, target);
            }
        }
        for (target, dealer) in opened {
            self.state.add_target(target, dealer);
        }
        let generation = self.state.generation;
        info!(
            generation,
            trigger = why,
            coalesced,
            targets = ?new.targets.iter().map(|t| t.name.as_str()).collect::<Vec<_>>(),
            restart_needed = ?restart,
            "config reloaded"
        );
        events(json!({"event": "reloaded", "generation": generation, "restart_needed": restart}));
        self.next_snapshot = now;
    }
}

#[derive(Debug, PartialEq)]
pub(super) struct Plan<'a> {
    /// Targets to take out of service: removed, or re-pointed.
    pub retired: Vec<usize>,
    /// Targets that need a new DEALER: new, or re-pointed.
    pub added: Vec<&'a config::Target>,
}

pub(super) fn plan<'a, D>(running: &State<D>, new: &'a [config::Target]) -> Plan<'a> {
    let mut plan = Plan {
        retired: Vec::new(),
        added: Vec::new(),
    };
    for target in new {
        // A changed CURVE key re-points the target, as a changed endpoint.
        let same_key = running
            .config
            .targets
            .iter()
            .find(|t| t.name.eq_ignore_ascii_case(&target.name))
            .is_some_and(|t| t.curve_server_key == target.curve_server_key);
        match running.target_index(&target.name) {
            Some(i) if running.targets[i].endpoint == target.endpoint && same_key => {}
            Some(i) => {
                plan.retired.push(i);
                plan.added.push(target);
            }
            None => plan.added.push(target),
        }
    }
    for (i, target) in running.targets.iter().enumerate() {
        let kept = new
            .iter()
            .any(|t| t.name.eq_ignore_ascii_case(&target.name));
        if !target.retired && !kept {
            plan.retired.push(i);
        }
    }
    plan
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::File;
    use std::time::Instant;

    fn config(targets: &[(&str, &str)]) -> config::Config {
        // Without the seed's two targets.
        let mut text = String::from("main_pc_addr = \"\"\npc2_addr = \"\"\n");
        for (name, endpoint) in targets {
            text += &format!("[targets.{name}]\nendpoint = \"{endpoint}\"\n");
        }
        File::from_toml_str(&text).unwrap().validate().unwrap()
    }

    fn running(targets: &[(&str, &str)]) -> State<()> {
        let config = config(targets);
        let dealers = vec![(); config.targets.len()];
        State::new(config, dealers, Instant::now())
    }

    #[test]
    fn targets_are_kept_repointed_added_and_removed() {
        let state = running(&[
            ("a", "tcp://127.0.0.1:7001"),
            ("b", "tcp://127.0.0.1:7002"),
            ("c", "tcp://127.0.0.1:7003"),
        ]);
        let new = config(&[
            ("a", "tcp://127.0.0.1:7001"),
            ("b", "tcp://127.0.0.1:7012"),
            ("d", "tcp://127.0.0.1:7004"),
        ]);
        let plan = plan(&state, &new.targets);
        assert_eq!(plan.retired, [1, 2], "b re-pointed, c removed");
        let added: Vec<&str> = plan.added.iter().map(|t| t.name.as_str()).collect();
        assert_eq!(added, ["b", "d"]);
    }

    #[test]
    fn the_same_config_changes_nothing() {
        let targets = [("a", "tcp://127.0.0.1:7001"), ("b", "ipc:///tmp/b")];
        let state = running(&targets);
        let new = config(&targets);
        assert_eq!(
            plan(&state, &new.targets),
            Plan {
                retired: vec![],
                added: vec![]
            }
        );
    }

    #[test]
    fn a_target_spelled_another_way_is_kept() {
        let state = running(&[("svc", "tcp://127.0.0.1:7002")]);
        let new = config(&[("SVC", "tcp://127.0.0.1:7002")]);
        assert_eq!(
            plan(&state, &new.targets),
            Plan {
                retired: vec![],
                added: vec![]
            },
            "retiring it would leave no target of that name"
        );
    }

    #[test]
    fn a_retired_target_is_not_retired_again() {
        let mut state = running(&[("a", "tcp://127.0.0.1:7001")]);
        state.retire(0);
        let new = config(&[]);
        assert_eq!(plan(&state, &new.targets).retired, Vec::<usize>::new());
        let back = config(&[("a", "tcp://127.0.0.1:7001")]);
        let plan = plan(&state, &back.targets);
        assert_eq!(plan.added.len(), 1, "a removed target comes back new");
    }
}
