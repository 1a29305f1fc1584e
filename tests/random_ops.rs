//! Random file operations through a real mount, checked against the history: every moment
//! named along the way restores to exactly the tree it named (`tests/random_ops.py`).

mod common;

use std::process::Command;

use common::Sandbox;

/// Sixteen seeds of 300 operations, a mark every 25. The operations and what is compared are
/// in the script; among what this found: a file cut back and rewritten kept old bytes past its
/// end, captures lost to a rename made right after, attributes and hard-linked writes that
/// were not recorded.
#[test]
fn random_operations_leave_every_moment_equal_to_the_tree_it_named() {
    let s = Sandbox::new();
    s.mount();
    let seeds: Vec<String> = (1..=16).map(|i| i.to_string()).collect();
    let out = Command::new("python3")
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/random_ops.py"))
        .arg(&s.dir)
        .arg(seeds.join(","))
        .args(["300", "25", "--"])
        .arg(common::bin())
        .arg("--store")
        .arg(&s.store)
        .env("HOME", s.home.path())
        .env("OPENCLAW_STATE_DIR", &s.dir)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(stdout.matches("marks checked").count(), 16, "{stdout}");
    // Nor did the recorder lose track of the tree on the way, or fail a commit (either heals,
    // loudly): the daemon logged no warning beyond the one a descriptor opened under a name
    // that is not versioned, then renamed in while open, is meant to give.
    let log = std::fs::read_to_string(s.store.join("daemon.log")).unwrap();
    let warned: Vec<&str> = log
        .lines()
        .filter(|l| l.contains(" WARN ") || l.contains(" ERROR ") || l.contains("panicked"))
        .filter(|l| !l.contains("already open passed through"))
        .collect();
    assert!(warned.is_empty(), "{warned:#?}");
    s.unmount();
}
