//! What the benchmarks share: the Nexus policy grown by filler rules.

const NEXUS: &str = include_str!("../../../../examples/nexus/nexus.yaml");

/// The Nexus policy plus `n` conditional rules on other actions: half exact names, a quarter
/// prefix patterns, a quarter exact names in another namespace.
pub fn warden_policy(n: usize) -> String {
    let mut text = NEXUS.to_owned();
    for i in 0..n {
        let actions = match i % 4 {
            0 | 1 => format!("[svc{i}.op]"),
            2 => format!("[\"svc{i}.*\"]"),
            _ => format!("[other{i}.run]"),
        };
        text.push_str(&format!(
            "  - id: filler-{i}\n    actions: {actions}\n    when: action.payload.amount > {i}\n    effect: deny\n"
        ));
    }
    // The filler rules go under `rules:`; move the sections after it below them.
    let (head, rest) = text.split_once("\nbudgets:").unwrap();
    let (tail, fillers) = rest.split_at(rest.find("  - id: filler-").unwrap_or(rest.len()));
    format!("{head}\n{fillers}\nbudgets:{tail}")
}
