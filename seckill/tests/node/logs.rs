//! The node's log: plain text without ANSI colours when stderr is not a
//! terminal (a file, a pipe), and `--log-format json` for shipping: one
//! JSON object a line.

use serde_json::{json, Value};

use crate::support::Node;

/// A node logging at info level (tests run nodes at warn).
fn start(extra: &[&str]) -> Node {
    let root = seckill_testkit::temp_dir("seckill-logs-");
    Node::start_in_env(root, extra, &[("RUST_LOG", "info")])
}

/// The log lines of every run (without the test's run headers).
fn lines(node: &Node) -> Vec<String> {
    node.log_tail()
        .lines()
        .filter(|l| !l.starts_with("--- run ") && !l.trim().is_empty())
        .map(str::to_owned)
        .collect()
}

#[test]
fn a_log_file_has_no_colour_codes() {
    let mut node = start(&[]);
    node.client()
        .create_sale("quiet", &json!({ "stock": 1, "per_user_limit": 1 }));
    node.terminate();
    let log = lines(&node).join("\n");
    assert!(log.contains("journal replayed"), "{log}");
    assert!(
        !log.contains('\u{1b}'),
        "escape codes in the log file:\n{log}"
    );
}

#[test]
fn log_format_json_writes_one_object_a_line() {
    let mut node = start(&["--log-format", "json"]);
    node.terminate();
    let lines = lines(&node);
    assert!(!lines.is_empty(), "nothing logged");
    let mut messages = Vec::new();
    for line in &lines {
        let v: Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not a JSON line ({e}): {line}"));
        assert!(v["level"].is_string(), "{line}");
        assert!(v["timestamp"].is_string(), "{line}");
        messages.push(
            v["fields"]["message"]
                .as_str()
                .unwrap_or_default()
                .to_owned(),
        );
    }
    assert!(
        messages.iter().any(|m| m == "journal replayed"),
        "{messages:?}"
    );
}
