//! Random file operations through a real mount, checked against the history: every moment
//! named along the way restores to exactly the tree it named (`tests/random_ops.py`).

mod common;

use std::process::Command;

use common::s3::{s3_remote, S3s};
use common::Sandbox;

/// Runs `tests/random_ops.py` over `seeds` in a fresh sandbox (with `extra` arguments, and
/// remote `origin` on `s3` when given, added before the mount so that the daemon replicates
/// all along), and checks that every mark restored to the tree it named and that the daemon
/// logged no warning beyond the meant ones: a descriptor opened under a name that is not
/// versioned, then renamed in while open; a directory a rollback keeps for the unversioned
/// files it holds; with `--crash`, the sentinel saying the daemon died. Any other is the
/// recorder losing track of the tree, or failing a commit: either heals, loudly.
fn random_operations(seeds: impl Iterator<Item = u32>, extra: &[&str], s3: Option<&S3s>) {
    let s = Sandbox::new();
    if let Some(s3) = s3 {
        s3_remote(&s, s3, "random operations", &[]);
    }
    s.mount();
    let list: Vec<String> = seeds.map(|i| i.to_string()).collect();
    let mut py = Command::new("python3");
    py.arg(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/random_ops.py"))
        .arg(&s.dir)
        .arg(list.join(","))
        .args(["300", "25"])
        .args(extra)
        .arg("--")
        .arg(common::bin())
        .arg("--store")
        .arg(&s.store)
        .env("HOME", s.home.path())
        .env("OPENCLAW_STATE_DIR", &s.dir)
        .env("CLAWFS_LOG", "warn")
        .env("CLAWFS_SCRYPT_LOG_N", "10")
        .envs(s.env.borrow().iter().cloned());
    if let Some(s3) = s3 {
        py.env(
            "CLAWFS_RANDOM_REMOTE",
            format!("s3://bkt/agent --endpoint {} --path-style", s3.endpoint()),
        );
    }
    let out = py.output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        stdout.matches("marks checked").count(),
        list.len()
            + extra
                .iter()
                .filter(|a| ["--prune", "--browse", "--clone"].contains(a))
                .count(),
        "{stdout}"
    );
    let log = std::fs::read_to_string(s.store.join("daemon.log")).unwrap();
    let warned: Vec<&str> = log
        .lines()
        .filter(|l| l.contains(" WARN ") || l.contains(" ERROR ") || l.contains("panicked"))
        .filter(|l| {
            let meant = l.contains("already open passed through")
                || l.contains("kept: the directory holds files that are not versioned")
                || (extra.contains(&"--crash") && l.contains("the clawfs daemon died"));
            !meant
        })
        .collect();
    assert!(warned.is_empty(), "{warned:#?}");
    s.unmount();
}

/// Sixteen seeds of 300 operations through the mount, a mark every 25. Among what this found:
/// a file cut back and rewritten kept old bytes past its end, captures lost to a rename made
/// right after, attributes and hard-linked writes that were not recorded.
#[test]
fn random_operations_leave_every_moment_equal_to_the_tree_it_named() {
    random_operations(1..=16, &[], None);
}

/// Eight seeds whose second half runs on the plain directory, unmounted: each mark made then
/// captures what changed since the last, and the next mount the rest. It found a mark made
/// offline naming the moment of the last unmount, and a file two names shared in the history
/// captured over when one of them was replaced while unmounted.
#[test]
fn random_operations_while_unmounted_are_captured_by_marks_and_the_next_mount() {
    random_operations(17..=24, &["--offline"], None);
}

/// Eight seeds with live rollbacks of the seed's tree to earlier marks along the way (about
/// 150 rollbacks in all): each leaves the tree as the mark named it, and the moment it makes
/// restores to the tree it left. It found a rollback leaving a file's `user.` attributes as
/// they were when only those differed, and one putting a file's names back as separate files.
#[test]
fn random_operations_with_rollbacks_leave_the_tree_as_each_mark_named_it() {
    random_operations(1..=8, &["--rollbacks"], None);
}

/// Eight seeds during which the daemon is killed twice (`kill -9`) and mounted again at once,
/// and every moment but the marks is pruned during half the rounds (a prune is killed with the
/// daemon now and then): what the daemon had not committed yet is captured by the next mount,
/// and every mark restores.
#[test]
fn random_operations_across_killed_daemons_leave_every_mark_restorable() {
    random_operations(25..=32, &["--crash", "--prune-live"], None);
}

/// Eight seeds with rollbacks, the daemon replicating to a real S3 server all along. Then
/// every moment but the marks is pruned, here and on the remote, and every mark must restore
/// as before, through the read-only view of the past, and on a new machine cloned from the
/// remote. It found the view hiding modes' write bits and `user.` attributes, and restores
/// writing a file's names as separate files.
#[test]
fn random_operations_survive_pruning_and_read_back_through_the_view_and_a_clone() {
    let s3 = S3s::start();
    random_operations(
        33..=40,
        &["--rollbacks", "--prune", "--browse", "--clone"],
        Some(&s3),
    );
}

/// Eight seeds with three writers at once between two marks, on the same names, rollbacks,
/// and prunes during half the rounds, while the writers run: every mark restores to the tree
/// it named, whatever order the writers' requests met in. It found opens racing renames in other directories, and marks missing the writes
/// of a descriptor opened under a versioned name while another writer held the file open
/// passed through (under a name that is not versioned), which the daemon does not see.
#[test]
fn random_operations_by_three_writers_at_once_leave_every_mark_restorable() {
    random_operations(
        41..=48,
        &["--threads", "3", "--rollbacks", "--prune-live"],
        None,
    );
}
