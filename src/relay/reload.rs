//! What a reloaded config does to the running targets, as a pure diff: a
//! target is kept (same name, without regard to case, and same endpoint;
//! its timeout and breaker settings follow the new config), re-pointed (a
//! new DEALER; the old one is retired and stays until its requests are
//! answered), added, or removed (retired). The loop opens the new DEALERs
//! first, so that a reload whose socket cannot open changes nothing.

use super::state::State;
use crate::config;

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
        match running.target_index(&target.name) {
            Some(i) if running.targets[i].endpoint == target.endpoint => {}
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
