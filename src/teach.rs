//! The config parser's messages in a user's words: serde says `unknown
//! field`, `expected u16`, and lists every key; a person wants "did you
//! mean `request_timeout`?" and "a port number". Pure string work.

/// `message` (serde's, for the TOML file) rewritten for a person.
pub fn teach(message: &str) -> String {
    if let Some(rest) = message.strip_prefix("unknown field `") {
        if let Some((unknown, known)) = rest.split_once("`, expected one of ") {
            return unknown_key(unknown, known);
        }
        if let Some((unknown, _)) = rest.split_once('`') {
            return format!("unknown key `{unknown}`: this section takes no keys of that name");
        }
    }
    let mut out = message.to_string();
    for (rust, words) in [
        ("expected u16", "expected a port number, 0 to 65535"),
        ("expected u32", "expected a whole number, 0 to 4294967295"),
        ("expected u64", "expected a whole number, 0 or more"),
        ("expected usize", "expected a whole number, 0 or more"),
        ("expected i32", "expected a whole number"),
        ("expected i64", "expected a whole number"),
        ("expected f64", "expected a number"),
    ] {
        out = out.replace(rust, words);
    }
    out.replace("invalid type: ", "wrong kind of value: ")
        .replace("invalid value: ", "out of range: ")
}

/// What `--help` shows for a key's value: `<SECONDS>`, `<PORT>`, ..., not
/// a Rust type.
pub fn value_name(key: &str, ty: &str) -> &'static str {
    let seconds = ["_timeout", "_interval", "_delay", "_wait", "_skew"];
    if key.ends_with("_port") {
        "PORT"
    } else if seconds.iter().any(|s| key.ends_with(s)) {
        "SECONDS"
    } else if key.starts_with("rate_limit") && key.ends_with("_burst") {
        "REQUESTS"
    } else if key.starts_with("rate_limit") && ty == "f64" {
        "PER_SECOND"
    } else if key.ends_with("_bytes") {
        "BYTES"
    } else if key.ends_with("_file") || key == "curve_clients" {
        "PATH"
    } else if key.ends_with("_host") || key.ends_with("_addr") {
        "ADDRESS"
    } else {
        match ty {
            "bool" => "true|false",
            "usize" | "u32" | "u64" | "i32" => "N",
            "f64" => "NUMBER",
            _ => "VALUE",
        }
    }
}

/// "unknown key `x`: did you mean `y`?", from serde's list of the keys.
fn unknown_key(unknown: &str, known: &str) -> String {
    let keys: Vec<&str> = known
        .split(", ")
        .map(|k| k.trim_matches(|c| c == '`' || c == ' '))
        .filter(|k| !k.is_empty())
        .collect();
    let closest = keys
        .iter()
        .map(|k| (distance(&unknown.to_lowercase(), k), *k))
        .min()
        .filter(|&(d, k)| d <= 3.max(k.len() / 4) && d < k.len());
    match closest {
        Some((_, key)) => format!("unknown key `{unknown}`: did you mean `{key}`?"),
        None => format!(
            "unknown key `{unknown}`: not a zbridge key (the keys and their meaning: README.md, \"Configuration\"; `zbridge check-config` on the example config prints them all)"
        ),
    }
}

/// Levenshtein distance, on bytes (keys are ASCII).
fn distance(a: &str, b: &str) -> usize {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, &x) in a.iter().enumerate() {
        let mut diagonal = row[0];
        row[0] = i + 1;
        for (j, &y) in b.iter().enumerate() {
            let above = row[j + 1];
            row[j + 1] = (above + 1)
                .min(row[j] + 1)
                .min(diagonal + usize::from(x != y));
            diagonal = above;
        }
    }
    row[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEYS: &str = "`mode`, `primary_port`, `request_timeout`, `drain_timeout`, `targets`";

    #[test]
    fn a_typo_gets_the_key_it_was_meant_to_be() {
        let said = teach(&format!(
            "unknown field `request_timout`, expected one of {KEYS}"
        ));
        assert_eq!(
            said,
            "unknown key `request_timout`: did you mean `request_timeout`?"
        );
        let said = teach(&format!(
            "unknown field `primry_port`, expected one of {KEYS}"
        ));
        assert!(said.ends_with("did you mean `primary_port`?"), "{said}");
        let said = teach(&format!(
            "unknown field `Drain_Timeout`, expected one of {KEYS}"
        ));
        assert!(said.ends_with("did you mean `drain_timeout`?"), "{said}");
    }

    #[test]
    fn a_key_like_none_gets_no_guess_and_no_list() {
        let said = teach(&format!("unknown field `colour`, expected one of {KEYS}"));
        assert!(
            said.starts_with("unknown key `colour`: not a zbridge key"),
            "{said}"
        );
        assert!(!said.contains("primary_port"), "{said}");
    }

    #[test]
    fn rust_type_names_become_words() {
        assert_eq!(
            teach("invalid type: string \"5600\", expected u16"),
            "wrong kind of value: string \"5600\", expected a port number, 0 to 65535"
        );
        assert_eq!(
            teach("invalid value: integer `70000`, expected u16"),
            "out of range: integer `70000`, expected a port number, 0 to 65535"
        );
        assert!(!teach("invalid type: string \"x\", expected usize").contains("usize"));
        assert!(!teach("invalid type: string \"x\", expected f64").contains("f64"));
    }

    #[test]
    fn help_names_values_as_a_user_would() {
        assert_eq!(value_name("primary_port", "u16"), "PORT");
        assert_eq!(value_name("heartbeat_timeout", "f64"), "SECONDS");
        assert_eq!(value_name("rate_limit_global", "f64"), "PER_SECOND");
        assert_eq!(value_name("rate_limit_global_burst", "f64"), "REQUESTS");
        assert_eq!(value_name("max_message_bytes", "usize"), "BYTES");
        assert_eq!(value_name("max_frames", "usize"), "N");
    }

    #[test]
    fn distances() {
        assert_eq!(distance("kitten", "sitting"), 3);
        assert_eq!(distance("", "abc"), 3);
        assert_eq!(distance("same", "same"), 0);
    }
}
