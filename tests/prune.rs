//! `clawfs prune` end to end: a real mount, real SQLite and Python writing through it, a
//! `file://` remote, and a new machine cloning what was pushed before and after the prune.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use common::s3::{s3_remote, S3s};
use common::Sandbox;

const PASS: &str = "correct horse battery staple";

/// The retention both prune tests ask for: only what is younger than five seconds is kept whole.
const POLICY: [&str; 6] = ["--keep-within", "5s", "--hourly", "5s", "--daily", "5s"];

/// The real files: path → size and a hash of the content.
fn snapshot(dir: &Path) -> BTreeMap<String, (u64, u64)> {
    let mut out = BTreeMap::new();
    for e in walk(dir) {
        let data = std::fs::read(&e).unwrap();
        let h = data.iter().fold(0xcbf29ce484222325u64, |h, b| {
            (h ^ *b as u64).wrapping_mul(0x100000001b3)
        });
        let rel = e.strip_prefix(dir).unwrap().to_string_lossy().into_owned();
        out.insert(rel, (data.len() as u64, h));
    }
    out
}

fn walk(d: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(d).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else if !p.to_string_lossy().ends_with("-shm") {
            out.push(p);
        }
    }
    out
}

fn moments(sb: &Sandbox) -> Vec<u64> {
    sb.json(&["log", "--limit", "100000"])
        .iter()
        .map(|e| e["seq"].as_u64().unwrap())
        .collect()
}

fn store_bytes(sb: &Sandbox) -> u64 {
    sb.json(&["status"])[0]["store_bytes"].as_u64().unwrap()
}

/// One round of agent work: a transaction in a WAL database, MEMORY.md rewritten (400 KB of
/// fresh bytes, so that old versions fill packs of their own).
fn work(sb: &Sandbox, i: u32) {
    sb.sh(&format!(
        "sqlite3 state.sqlite 'PRAGMA synchronous=NORMAL; INSERT INTO t VALUES ({i}, randomblob(20000))' >/dev/null"
    ));
    sb.sh(&format!(
        "python3 -c 'import os; open(\"MEMORY.md\", \"wb\").write(b\"round {i}\\n\" + os.urandom(400000).hex().encode()[:400000])'"
    ));
}

/// A WAL database made, then `n` rounds of [`work`], `after` called after each; the moment
/// after round ten is marked `ten`. Returns MEMORY.md as it was then.
fn rounds(sb: &Sandbox, n: u32, after: &mut dyn FnMut(u32)) -> Vec<u8> {
    sb.sh("sqlite3 state.sqlite 'PRAGMA journal_mode=WAL; CREATE TABLE t(i INTEGER, pad BLOB)' >/dev/null");
    let mut memory_at_ten = Vec::new();
    for i in 0..n {
        work(sb, i);
        if i == 10 {
            sb.settle();
            sb.ok(&["mark", "ten"]);
            memory_at_ten = sb.read("MEMORY.md");
        }
        after(i);
    }
    sb.settle();
    memory_at_ten
}

/// The moment marked `ten` reads back whole: MEMORY.md as it was, and the database with its
/// -wal as one crash-consistent cut (11 rows, integrity ok).
fn reads_back_at_ten(sb: &Sandbox, memory_at_ten: &[u8]) {
    assert_eq!(
        sb.ok(&["cat", "MEMORY.md", "--at", "ten"]).into_bytes(),
        memory_at_ten
    );
    let at_ten = sb.home.path().join("at-ten");
    sb.ok(&["restore", "--at", "ten", at_ten.to_str().unwrap()]);
    assert_eq!(
        common::sh_in(
            &at_ten,
            "sqlite3 state.sqlite 'PRAGMA integrity_check; SELECT count(*) FROM t'"
        ),
        "ok\n11\n"
    );
}

#[test]
fn prune_thins_a_live_mount_and_every_kept_moment_reads_back() {
    let (_remote_dir, url) = common::file_remote();
    let sb = Sandbox::new();
    sb.set_env("CLAWFS_PASSPHRASE", PASS);
    // Pushed only when asked: the remote takes part of the history before the prune and the
    // thinned rest after it.
    sb.ok(&["remote", "add", "nas", &url, "--schedule", "daily"]);
    sb.mount();
    let memory_at_ten = rounds(&sb, 40, &mut |i| {
        if i == 25 {
            // The remote holds everything up to here.
            sb.settle();
            sb.ok(&["push", "--wait"]);
        }
    });
    // Everything so far is old by the time the recent work is done.
    std::thread::sleep(Duration::from_secs(6));
    sb.write("MEMORY.md", b"recent one\n");
    sb.settle();
    sb.write("MEMORY.md", b"recent two\n");
    let head = sb.settle();
    let before = moments(&sb);
    let real = snapshot(&sb.dir);
    let bytes_before = store_bytes(&sb);
    let mut args = vec!["prune", "--dry-run"];
    args.extend_from_slice(&POLICY);
    let dry = sb.json(&args)[0].clone();
    assert_eq!(dry["dry_run"], true);
    assert_eq!(moments(&sb), before, "a dry run changes nothing");
    let kept = dry["moments_kept"].as_u64().unwrap();
    assert!(
        kept >= 4 && (kept as usize) < before.len() / 4,
        "{kept} of {} kept",
        before.len()
    );

    let mut args = vec!["prune"];
    args.extend_from_slice(&POLICY);
    let report = sb.json(&args)[0].clone();
    assert_eq!(report["moments_kept"], kept, "{report}");
    assert!(
        report["oldest_kept"]["time"]
            .as_str()
            .unwrap()
            .ends_with('Z'),
        "{report}"
    );
    assert!(report["records_removed"].as_u64().unwrap() > 0, "{report}");
    assert!(report["packs_removed"].as_u64().unwrap() > 0, "{report}");
    assert!(
        report["pack_bytes_removed"].as_u64().unwrap() > report["bytes_copied"].as_u64().unwrap(),
        "{report}"
    );
    let after = moments(&sb);
    assert_eq!(after.len() as u64, kept);
    assert_eq!(sb.json(&["status"])[0]["moments"], kept);
    assert_eq!(after[0], head, "the newest moment stays");
    let bytes_after = store_bytes(&sb);
    assert!(
        bytes_after < bytes_before / 2,
        "store {bytes_before} -> {bytes_after} bytes"
    );

    // The real files are exactly as they were, and the database is sound.
    assert_eq!(snapshot(&sb.dir), real);
    assert_eq!(
        sb.sh("sqlite3 state.sqlite 'PRAGMA integrity_check; SELECT count(*) FROM t'"),
        "ok\n40\n"
    );
    reads_back_at_ten(&sb, &memory_at_ten);
    assert_eq!(sb.ok(&["cat", "MEMORY.md", "--at", "now"]), "recent two\n");
    assert_eq!(
        sb.ok(&["cat", "MEMORY.md", "--at", &format!("#{}", after[1])]),
        "recent one\n",
        "every recent moment stays"
    );
    // A moment that was folded away is refused by name, with the kept ones around it.
    let gone = (1..head).find(|s| !after.contains(s)).unwrap();
    let err = sb.fails(&["cat", "MEMORY.md", "--at", &format!("#{gone}")]);
    assert!(err.contains("thinned out by `clawfs prune`"), "{err}");
    assert!(sb.ok(&["verify"]).contains("all intact"));

    // Recording goes on; the remote takes the thinned history after what it had.
    sb.write("after.md", b"written after the prune\n");
    sb.settle();
    assert_eq!(sb.json(&["history", "after.md"]).len(), 1);
    sb.ok(&["push", "--wait"]);
    let now = snapshot(&sb.dir);
    sb.unmount();
    // Unmounted, with the default policy (everything is younger than a day): nothing goes.
    let r = sb.json(&["prune"])[0].clone();
    assert_eq!(r["moments_kept"], r["moments_before"], "{r}");

    let nm = Sandbox::new();
    nm.set_env("CLAWFS_PASSPHRASE", PASS);
    std::fs::remove_dir(&nm.dir).unwrap();
    nm.ok(&["clone", "--from", &url]);
    assert_eq!(snapshot(&nm.dir), now);
    assert_eq!(
        nm.ok(&["cat", "MEMORY.md", "--at", "ten"]).into_bytes(),
        memory_at_ten
    );
    assert!(nm.ok(&["verify"]).contains("all intact"));
}

fn bucket_bytes(s3: &S3s) -> u64 {
    s3.objects()
        .iter()
        .map(|p| std::fs::metadata(p).unwrap().len())
        .sum()
}

/// `prune --remote` on a live mount: the bucket of a real S3 server is thinned with the store,
/// the real files are untouched, and a new machine clones exactly the kept moments.
#[test]
fn prune_remote_thins_the_bucket_and_a_new_machine_clones_the_kept_moments() {
    let s3 = S3s::start();
    let sb = Sandbox::new();
    s3_remote(&sb, &s3, PASS, &[]);
    sb.mount();
    let memory_at_ten = rounds(&sb, 30, &mut |i| {
        if i % 5 == 4 {
            // Several pushes: a log of several segments, each with its packs.
            sb.settle();
            sb.ok(&["push", "--wait"]);
        }
    });
    std::thread::sleep(Duration::from_secs(6));
    sb.write("MEMORY.md", b"recent\n");
    sb.settle();
    sb.ok(&["push", "--wait"]);
    let real = snapshot(&sb.dir);
    let bucket_before = bucket_bytes(&s3);

    // A remote that is not configured is refused before anything is pruned.
    let before = moments(&sb);
    let err = sb.fails(&[&["prune"][..], &POLICY, &["--remote", "nosuch"]].concat());
    assert!(err.contains("nosuch"), "{err}");
    assert_eq!(moments(&sb), before);

    let args = [&["prune"][..], &POLICY, &["--remote", "origin"]].concat();
    let mut dry = args.clone();
    dry.push("--dry-run");
    let d = sb.json(&dry)[0].clone();
    assert_eq!(
        bucket_bytes(&s3),
        bucket_before,
        "a dry run changes nothing: {d}"
    );
    let report = sb.json(&args)[0].clone();
    let kept = report["moments_kept"].as_u64().unwrap();
    let r = &report["remotes"][0];
    assert_eq!(r["remote"], "origin", "{report}");
    assert_eq!(r["moments_after"], kept, "{report}");
    assert!(r["moments_before"].as_u64().unwrap() > 4 * kept, "{report}");
    assert!(r["segments_before"].as_u64().unwrap() >= 7, "{report}");
    assert!(r["packs_removed"].as_u64().unwrap() > 0, "{report}");
    assert_eq!(
        d["remotes"][0]["moments_before"], r["moments_before"],
        "{d}"
    );
    let bucket_after = bucket_bytes(&s3);
    assert!(
        bucket_after < bucket_before / 2,
        "bucket {bucket_before} -> {bucket_after} bytes"
    );
    assert_eq!(snapshot(&sb.dir), real, "the real files are untouched");

    // Recording and pushing go on after a thinned log.
    sb.write("after.md", b"written after the thinning\n");
    sb.settle();
    sb.ok(&["push", "--wait"]);
    let kept_here = moments(&sb);
    let now = snapshot(&sb.dir);
    sb.unmount();
    // Unmounted, a passphrase that does not open the remote stops the command before anything
    // is pruned.
    sb.set_env("CLAWFS_PASSPHRASE", "not the passphrase");
    let err = sb.fails(&[
        "prune",
        "--keep-within",
        "1s",
        "--hourly",
        "1s",
        "--daily",
        "1s",
        "--remote",
        "origin",
    ]);
    assert!(err.contains("wrong passphrase"), "{err}");
    assert_eq!(moments(&sb), kept_here);

    let nm = Sandbox::new();
    nm.set_env("CLAWFS_PASSPHRASE", PASS);
    nm.set_env("AWS_ACCESS_KEY_ID", common::s3::ACCESS_KEY);
    nm.set_env("AWS_SECRET_ACCESS_KEY", common::s3::SECRET_KEY);
    std::fs::remove_dir(&nm.dir).unwrap();
    let ep = s3.endpoint();
    nm.ok(&[
        "clone",
        "--from",
        "s3://bkt/agent",
        "--endpoint",
        &ep,
        "--path-style",
    ]);
    assert_eq!(snapshot(&nm.dir), now);
    assert_eq!(
        moments(&nm),
        kept_here,
        "the clone has exactly the kept moments"
    );
    reads_back_at_ten(&nm, &memory_at_ten);
    assert!(nm.ok(&["verify"]).contains("all intact"));
}

/// Ages that are not ages, or a policy that gets shorter, are refused before anything changes.
#[test]
fn prune_refuses_a_bad_policy_and_changes_nothing() {
    let sb = Sandbox::new();
    sb.mount();
    sb.write("MEMORY.md", b"one\n");
    sb.settle();
    sb.write("MEMORY.md", b"two\n");
    sb.settle();
    let before = moments(&sb);
    let err = sb.fails(&["prune", "--keep-within", "banana"]);
    assert!(err.contains("\"banana\" is not an age"), "{err}");
    let err = sb.fails(&["prune", "--keep-within", "2h", "--hourly", "1h"]);
    assert!(err.contains("must not get shorter"), "{err}");
    assert_eq!(moments(&sb), before);
    sb.unmount();
}

/// Pruned again and again while a WAL database takes transactions through the mount, the first
/// prune folding a history longer than a live prune folds at once: every
/// moment left afterwards is still a crash-consistent cut (the database and its `-wal` from it
/// open with `integrity_check` ok, and their rows are a prefix of the inserts, growing with
/// time), the last one holds every row, and the real database is whole. (That a kept moment
/// reads exactly as before is the unit tests' to show: an older consistent state would pass
/// here.)
#[test]
fn pruning_while_a_wal_database_is_written_leaves_every_moment_consistent() {
    let sb = Sandbox::new();
    sb.mount();
    // First a long history, a moment per fsync: the first prune folds more moments than a
    // live prune folds at once (`FOLD_PIECE`), so it folds them in pieces, the writer going on
    // between them.
    sb.sh(r#"python3 -c '
import os
fd = os.open("notes.md", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
for i in range(1500):
    os.write(fd, b"line %d\n" % i); os.fsync(fd)
'"#);
    std::fs::create_dir_all(sb.path("state")).unwrap();
    let script = common::wal_writer("state/db.sqlite", 3000, 11, 300);
    let mut writer = std::process::Command::new("python3")
        .arg("-c")
        .arg(script)
        .current_dir(&sb.dir)
        .spawn()
        .unwrap();
    let mut prunes = 0;
    let mut folded = 0;
    while writer.try_wait().unwrap().is_none() {
        std::thread::sleep(Duration::from_millis(700));
        let r = sb.json(&[
            "prune",
            "--keep-within",
            "1s",
            "--hourly",
            "1s",
            "--daily",
            "1s",
        ])[0]
            .clone();
        folded += r["moments_before"].as_u64().unwrap() - r["moments_kept"].as_u64().unwrap();
        prunes += 1;
    }
    assert!(writer.wait().unwrap().success());
    assert!(
        prunes >= 3 && folded >= 1500,
        "{prunes} prunes folded {folded} moments"
    );
    sb.settle();
    // Oldest first, the newest 200.
    let mut moments = moments(&sb);
    assert!(moments.len() >= 10, "{} moments left", moments.len());
    moments.truncate(200);
    let ats: Vec<String> = moments.iter().rev().map(|s| format!("#{s}")).collect();
    let last_rows = common::rows_grow(&sb, "state/db.sqlite", &ats);
    assert_eq!(last_rows, 3000);
    assert_eq!(
        sb.sh("sqlite3 state/db.sqlite 'PRAGMA integrity_check; SELECT count(*) FROM t'"),
        "ok\n3000\n"
    );
    assert!(sb.ok(&["verify"]).contains("all intact"));
    let notes: String = (0..1500).map(|i| format!("line {i}\n")).collect();
    assert_eq!(sb.ok(&["cat", "notes.md"]), notes);
    sb.unmount();
}

/// On a store disk something else has filled, prune still frees space: the packs holding
/// nothing a kept moment uses go first, needing no room, and the copy the pack that still holds
/// a kept file needs then fits in what they gave back. The mount versions on afterwards.
#[test]
fn prune_on_a_full_store_disk_frees_the_dead_packs_first() {
    let sb = Sandbox::new();
    let _fs = common::SmallFs::mount(&sb.store, "96m");
    sb.mount();
    // Packs fill to 8 MiB: a.bin fills the first and starts the second, which kept.txt and
    // b.bin share; b.bin fills the third; c.bin the fourth (the newest sealed pack, which
    // prune leaves) and starts the open one.
    sb.sh("head -c 12M /dev/urandom > a.bin");
    sb.settle();
    sb.write("kept.txt", b"kept");
    sb.settle();
    sb.sh("head -c 12M /dev/urandom > b.bin");
    sb.settle();
    sb.sh("head -c 9M /dev/urandom > c.bin");
    sb.settle();
    sb.sh("rm a.bin b.bin c.bin");
    sb.settle();
    std::thread::sleep(Duration::from_secs(6));
    sb.write("new.txt", b"new");
    sb.settle();
    let ballast = sb.store.join("ballast");
    common::fill_disk(&sb.store, &ballast, 300 << 10);
    let report = sb.json(&[&["prune"][..], &POLICY].concat())[0].clone();
    assert!(report["packs_removed"].as_u64().unwrap() >= 3, "{report}");
    assert_eq!(report["packs_left_for_room"], 0, "{report}");
    assert!(report["bytes_copied"].as_u64().unwrap() > 0, "{report}");
    let freed =
        report["pack_bytes_removed"].as_u64().unwrap() - report["bytes_copied"].as_u64().unwrap();
    assert!(freed > 20 << 20, "{report}");
    assert_eq!(sb.raw(&["cat", "kept.txt"]).stdout, b"kept");
    std::fs::remove_file(&ballast).unwrap();
    sb.write("after.txt", b"after");
    sb.settle();
    assert_eq!(sb.raw(&["cat", "after.txt"]).stdout, b"after");
    sb.unmount();
}

fn dir_bytes(d: &Path) -> u64 {
    walk(d).iter().map(|f| f.metadata().unwrap().len()).sum()
}

/// 6,000 files written and removed through the mount: 12,000 records a prune takes out
/// of the catalogue.
fn churn(sb: &Sandbox) {
    sb.sh("python3 -c 'import os\nos.makedirs(\"churn\", exist_ok=True)\nfor i in range(6000):\n  open(\"churn/f%d\" % i, \"wb\").write(b\"x\" * 100)\nfor i in range(6000):\n  os.unlink(\"churn/f%d\" % i)'");
    sb.settle();
}

/// Prunes that empty much of the catalogue give its space back: a live prune says the
/// catalogue is compacted at the next mount, and the next mount does it before it opens the
/// store; an unmounted prune does it right after. Every kept moment reads as before, the store
/// verifies, and recording goes on.
#[test]
fn a_catalogue_emptied_by_a_prune_is_compacted_at_the_next_mount_or_right_after_an_unmounted_prune()
{
    let sb = Sandbox::new();
    let catalog = sb.store.join("catalog");
    sb.mount();
    sb.write("kept.md", b"kept\n");
    churn(&sb);
    std::thread::sleep(Duration::from_secs(6));
    sb.write("MEMORY.md", b"recent\n");
    sb.settle();
    let before = dir_bytes(&catalog);
    let out = sb.ok(&[&["prune"][..], &POLICY].concat());
    assert!(out.contains("compacted, at the next mount"), "{out}");
    assert!(sb.store.join("compact-due").exists());
    let real = snapshot(&sb.dir);
    sb.unmount();
    sb.mount();
    assert!(!sb.store.join("compact-due").exists());
    assert!(!sb.store.join("catalog.compact").exists());
    let after = dir_bytes(&catalog);
    assert!(after * 2 < before, "catalogue {before} -> {after} bytes");
    assert_eq!(snapshot(&sb.dir), real);
    assert_eq!(sb.ok(&["cat", "kept.md", "--at", "now"]), "kept\n");
    assert_eq!(sb.ok(&["cat", "MEMORY.md", "--at", "now"]), "recent\n");
    assert!(sb.ok(&["verify"]).contains("all intact"));
    sb.write("after.md", b"after\n");
    sb.settle();
    assert_eq!(sb.json(&["history", "after.md"]).len(), 1);

    churn(&sb);
    std::thread::sleep(Duration::from_secs(6));
    sb.unmount();
    let grown = dir_bytes(&catalog);
    let out = sb.ok(&[&["prune"][..], &POLICY].concat());
    assert!(out.contains("catalogue compacted: "), "{out}");
    assert!(!sb.store.join("compact-due").exists());
    assert!(!sb.store.join("catalog.compact").exists());
    let after = dir_bytes(&catalog);
    assert!(after * 2 < grown, "catalogue {grown} -> {after} bytes");
    assert_eq!(sb.ok(&["cat", "after.md", "--at", "now"]), "after\n");
    assert!(sb.ok(&["verify"]).contains("all intact"));
    sb.mount();
    assert_eq!(sb.read("kept.md"), b"kept\n");
    sb.write("later.md", b"later\n");
    sb.settle();
    assert_eq!(sb.json(&["history", "later.md"]).len(), 1);
    sb.unmount();
}

/// On a full store disk an unmounted prune fails with the reason and changes nothing (it
/// hung at exit before: sled's last flush after a failed write waits forever). With room for
/// the prune but not for a copy of the catalogue, it prunes, says the catalogue was not
/// compacted and why, and leaves it as it was, still due; the next mount with room compacts it.
#[test]
fn a_prune_or_compaction_with_no_room_says_why_and_the_next_mount_compacts() {
    let sb = Sandbox::new();
    let _fs = common::SmallFs::mount(&sb.store, "96m");
    sb.mount();
    sb.write("kept.md", b"kept\n");
    churn(&sb);
    std::thread::sleep(Duration::from_secs(6));
    sb.unmount();
    let before = moments(&sb);
    let ballast = sb.store.join("ballast");
    common::fill_disk(&sb.store, &ballast, 1 << 20);
    let out = sb.raw(&[&["prune"][..], &POLICY].concat());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(err.contains("No space left on device"), "{err}");
    assert_eq!(moments(&sb), before);
    assert_eq!(sb.ok(&["cat", "kept.md", "--at", "now"]), "kept\n");

    std::fs::remove_file(&ballast).unwrap();
    common::fill_disk(&sb.store, &ballast, 8 << 20);
    let out = sb.raw(&[&["prune"][..], &POLICY].concat());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(
        err.contains("the catalogue was not compacted (it is as it was")
            && err.contains("disk is full"),
        "{err}"
    );
    assert!(moments(&sb).len() < before.len() / 100);
    assert!(sb.store.join("compact-due").exists());
    assert!(!sb.store.join("catalog.compact").exists());
    let grown = dir_bytes(&sb.store.join("catalog"));
    assert_eq!(sb.ok(&["cat", "kept.md", "--at", "now"]), "kept\n");
    assert!(sb.ok(&["verify"]).contains("all intact"));
    std::fs::remove_file(&ballast).unwrap();
    sb.mount();
    assert!(!sb.store.join("compact-due").exists());
    let after = dir_bytes(&sb.store.join("catalog"));
    assert!(after * 2 < grown, "catalogue {grown} -> {after} bytes");
    assert_eq!(sb.read("kept.md"), b"kept\n");
    sb.unmount();
}
