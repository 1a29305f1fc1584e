//! Replication end to end: the real binary, real mounts, real S3 servers on 127.0.0.1
//! (s3s-fs, which checks signatures, and moto), and the `file://` remote.

mod common;

use std::collections::BTreeMap;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::time::{Duration, Instant};

use common::s3::{s3_remote, Moto, S3s, ACCESS_KEY, BUCKET, SECRET_KEY};
use common::{eventually, Sandbox};

const PASS: &str = "correct horse battery staple";
const TOKEN: &str = "SECRET-TOKEN-6b1f0c";
const MEMORY: &str = "The user's cat is called Quasar and hates Mondays.";

/// What a tree holds: kind, mode, and content or link target, by path.
fn snapshot(dir: &Path) -> BTreeMap<String, String> {
    fn go(root: &Path, d: &Path, out: &mut BTreeMap<String, String>) {
        let mut names: Vec<_> = std::fs::read_dir(d).unwrap().flatten().collect();
        names.sort_by_key(|e| e.file_name());
        for e in names {
            let p = e.path();
            let rel = p.strip_prefix(root).unwrap().to_string_lossy().into_owned();
            let m = std::fs::symlink_metadata(&p).unwrap();
            let mode = m.permissions().mode() & 0o7777;
            if m.file_type().is_symlink() {
                out.insert(
                    rel,
                    format!("link {}", std::fs::read_link(&p).unwrap().display()),
                );
            } else if m.is_dir() {
                out.insert(rel.clone(), format!("dir {mode:o}"));
                go(root, &p, out);
            } else {
                let data = std::fs::read(&p).unwrap();
                out.insert(
                    rel,
                    format!("file {mode:o} {} {:x}", data.len(), fxhash(&data)),
                );
            }
        }
    }
    let mut out = BTreeMap::new();
    go(dir, dir, &mut out);
    out
}

fn fxhash(d: &[u8]) -> u64 {
    d.iter().fold(0xcbf29ce484222325u64, |h, b| {
        (h ^ *b as u64).wrapping_mul(0x100000001b3)
    })
}

fn without_secrets(mut m: BTreeMap<String, String>) -> BTreeMap<String, String> {
    m.retain(|k, _| !k.starts_with("credentials") && !k.ends_with("auth-profiles.json"));
    m
}

/// An agent-like tree: Markdown memory, modes, a symlink, a SQLite database, secrets.
fn populate(sb: &Sandbox) {
    sb.write("MEMORY.md", MEMORY.as_bytes());
    sb.write("SOUL.md", b"Be kind. Be brief.\n");
    sb.write("workspace/scripts/run.sh", b"#!/bin/sh\necho hi\n");
    std::fs::set_permissions(
        sb.path("workspace/scripts/run.sh"),
        std::fs::Permissions::from_mode(0o755),
    )
    .unwrap();
    sb.write("credentials/oauth.json", TOKEN.as_bytes());
    sb.write("agents/main/agent/auth-profiles.json", TOKEN.as_bytes());
    std::fs::set_permissions(
        sb.path("credentials/oauth.json"),
        std::fs::Permissions::from_mode(0o600),
    )
    .unwrap();
    sb.sh("ln -s MEMORY.md memory-link && sqlite3 state.sqlite 'PRAGMA journal_mode=WAL; CREATE TABLE s(k TEXT, v TEXT); INSERT INTO s VALUES (\"session\", \"alpha\");' > /dev/null");
    let big: Vec<u8> = (0..600_000u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    sb.write("workspace/blob.bin", &big);
}

/// `cmd… URL --endpoint EP --path-style rest…`
fn s3_args<'a>(cmd: &[&'a str], url: &'a str, ep: &'a str, rest: &[&'a str]) -> Vec<&'a str> {
    let mut v = cmd.to_vec();
    v.extend_from_slice(&[url, "--endpoint", ep, "--path-style"]);
    v.extend_from_slice(rest);
    v
}

/// A fresh machine: own HOME and store, same passphrase and keys.
fn new_machine() -> Sandbox {
    let sb = Sandbox::new();
    sb.set_env("CLAWFS_PASSPHRASE", PASS);
    sb.set_env("AWS_ACCESS_KEY_ID", ACCESS_KEY);
    sb.set_env("AWS_SECRET_ACCESS_KEY", SECRET_KEY);
    sb
}

/// Restores from the s3 remote into a new directory of `nm`; must succeed.
fn restore_ok(nm: &Sandbox, s3: &S3s, name: &str, extra: &[&str]) -> std::path::PathBuf {
    let target = nm.home.path().join(name);
    common::assert_ok(&restore_from_s3(nm, s3, &target, extra));
    target
}

fn restore_from_s3(sb: &Sandbox, s3: &S3s, target: &Path, extra: &[&str]) -> std::process::Output {
    let ep = s3.endpoint();
    let t = target.to_str().unwrap();
    let mut args = vec![
        "restore",
        "--from",
        "s3://bkt/agent",
        "--endpoint",
        &ep,
        "--path-style",
    ];
    args.extend_from_slice(extra);
    args.push(t);
    sb.raw(&args)
}

#[test]
fn a_new_machine_restores_the_tree_byte_exact_now_and_at_a_past_mark() {
    let s3 = S3s::start();
    let sb = Sandbox::new();
    s3_remote(&sb, &s3, PASS, &[]);
    sb.mount();
    populate(&sb);
    // A sparse file travels as its chunk list and comes back sparse.
    sb.sh("truncate -s 1G disk.img && printf tail >> disk.img");
    sb.settle();
    sb.ok(&["mark", "before-edit"]);
    let before = without_secrets(snapshot(&sb.dir));
    sb.write("MEMORY.md", b"rewritten by a bad edit\n");
    std::fs::remove_file(sb.path("SOUL.md")).unwrap();
    sb.sh("sqlite3 state.sqlite \"INSERT INTO s VALUES ('session', 'beta');\"");
    sb.settle();
    sb.ok(&["push", "--wait"]);
    let now = snapshot(&sb.dir);
    sb.unmount();

    let nm = new_machine();
    let target = restore_ok(&nm, &s3, "restored", &[]);
    assert_eq!(snapshot(&target), without_secrets(now.clone()));
    let disk = std::fs::metadata(target.join("disk.img")).unwrap();
    assert_eq!(disk.len(), (1 << 30) + 4);
    assert!(
        disk.blocks() * 512 < 1 << 20,
        "restored dense: {} blocks",
        disk.blocks()
    );
    assert!(
        !target.join("credentials").exists(),
        "secrets are not replicated by default"
    );
    let rows = common::sh_in(
        &target,
        "sqlite3 state.sqlite 'SELECT v FROM s ORDER BY rowid'",
    );
    assert_eq!(rows, "alpha\nbeta\n");

    let past = restore_ok(&nm, &s3, "past", &["--at", "before-edit"]);
    assert_eq!(snapshot(&past), before);
    assert_eq!(
        std::fs::read_to_string(past.join("MEMORY.md")).unwrap(),
        MEMORY
    );

    // Only some paths.
    let ep = s3.endpoint();
    let part = nm.home.path().join("part");
    nm.ok(&s3_args(
        &["restore", "--from"],
        "s3://bkt/agent",
        &ep,
        &[part.to_str().unwrap(), "workspace/scripts"],
    ));
    assert_eq!(
        std::fs::read_dir(&part).unwrap().count(),
        1,
        "only the asked-for subtree"
    );
    assert!(part.join("workspace/scripts/run.sh").exists());

    // A restore never writes into a non-empty directory.
    let err = nm.fails(&s3_args(
        &["restore", "--from"],
        "s3://bkt/agent",
        &ep,
        &[part.to_str().unwrap()],
    ));
    assert!(err.contains("not empty"), "{err}");
}

#[test]
fn the_bucket_holds_no_plaintext_and_every_tampered_object_is_refused() {
    let s3 = S3s::start();
    let sb = Sandbox::new();
    s3_remote(&sb, &s3, PASS, &[]);
    sb.mount();
    populate(&sb);
    sb.settle();
    sb.ok(&["mark", "first"]);
    sb.ok(&["push", "--wait"]);
    sb.unmount();

    let needles: [&[u8]; 8] = [
        MEMORY.as_bytes(),
        b"Quasar",
        b"Be kind",
        TOKEN.as_bytes(),
        b"MEMORY.md",
        b"SOUL.md",
        b"run.sh",
        b"auth-profiles",
    ];
    let files = s3.all_files();
    assert!(files.len() >= 5, "{files:?}");
    for f in &files {
        let data = std::fs::read(f).unwrap();
        for n in needles {
            assert!(
                !data.windows(n.len()).any(|w| w == n),
                "{} contains {:?}",
                f.display(),
                String::from_utf8_lossy(n)
            );
        }
    }

    let nm = new_machine();
    let objects = s3.objects();
    for (i, obj) in objects.iter().enumerate() {
        let good = std::fs::read(obj).unwrap();
        let mut bad = good.clone();
        let at = bad.len() / 2;
        bad[at] ^= 0x40;
        std::fs::write(obj, &bad).unwrap();
        let target = nm.home.path().join(format!("t{i}"));
        let out = restore_from_s3(&nm, &s3, &target, &[]);
        std::fs::write(obj, &good).unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success(),
            "a flipped byte in {} went unnoticed",
            obj.display()
        );
        assert_eq!(err.trim().lines().count(), 1, "one clear line: {err}");
        assert!(
            err.contains("tampered") || err.contains("config") || err.contains("wrong passphrase"),
            "{}: {err}",
            obj.display()
        );
        assert!(!target.exists(), "nothing may be written to the target");
    }
    // Truncated, and missing.
    let pack = objects
        .iter()
        .find(|p| p.to_string_lossy().contains("/packs/"))
        .unwrap();
    let good = std::fs::read(pack).unwrap();
    std::fs::write(pack, &good[..good.len() - 100]).unwrap();
    let out = restore_from_s3(&nm, &s3, &nm.home.path().join("trunc"), &[]);
    assert!(!out.status.success());
    std::fs::remove_file(pack).unwrap();
    let out = restore_from_s3(&nm, &s3, &nm.home.path().join("missing"), &[]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("missing"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::write(pack, &good).unwrap();

    // Wrong passphrase: refused, nothing written, no store left behind by a clone.
    nm.set_env("CLAWFS_PASSPHRASE", "not it");
    let target = nm.home.path().join("wrong");
    let out = restore_from_s3(&nm, &s3, &target, &[]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("wrong passphrase"));
    assert!(!target.exists());
    let ep = s3.endpoint();
    let err = nm.fails(&s3_args(&["clone", "--from"], "s3://bkt/agent", &ep, &[]));
    assert!(err.contains("wrong passphrase"), "{err}");
    assert!(!nm.store.join("catalog").exists());

    // And with everything intact, it works.
    nm.set_env("CLAWFS_PASSPHRASE", PASS);
    restore_ok(&nm, &s3, "fine", &[]);
}

#[test]
fn clone_brings_history_so_log_rollback_and_push_work_on_the_new_machine() {
    let (_remote_dir, url) = common::file_remote();
    let sb = Sandbox::new();
    sb.set_env("CLAWFS_PASSPHRASE", PASS);
    sb.ok(&["remote", "add", "nas", &url, "--include-secrets"]);
    sb.mount();
    populate(&sb);
    sb.settle();
    sb.ok(&["mark", "good"]);
    sb.write("MEMORY.md", b"broken\n");
    sb.settle();
    sb.ok(&["push", "--wait"]);
    let now = snapshot(&sb.dir);
    sb.unmount();

    let nm = Sandbox::new();
    nm.set_env("CLAWFS_PASSPHRASE", PASS);
    std::fs::remove_dir(&nm.dir).unwrap();
    nm.ok(&["clone", "--from", &url]);
    assert_eq!(
        snapshot(&nm.dir),
        now,
        "secrets come along when the remote opts in"
    );
    let log = nm.ok(&["log", "--limit", "500"]);
    assert!(log.contains("MEMORY.md"), "{log}");
    assert!(nm.ok(&["marks"]).contains("good"));
    assert_eq!(nm.ok(&["cat", "MEMORY.md", "--at", "good"]), MEMORY);
    nm.ok(&["rollback", "--to", "good", "--yes", "MEMORY.md"]);
    assert_eq!(
        std::fs::read_to_string(nm.path("MEMORY.md")).unwrap(),
        MEMORY
    );
    // The new machine goes on pushing the same history.
    nm.mount();
    nm.write("NEW.md", b"written on the new machine\n");
    nm.settle();
    nm.ok(&["push", "--wait"]);
    nm.unmount();
    let devices = nm.ok(&["remote", "devices"]);
    assert_eq!(devices.lines().count(), 1, "{devices}");
    let third = Sandbox::new();
    third.set_env("CLAWFS_PASSPHRASE", PASS);
    let t = third.home.path().join("t");
    third.ok(&["restore", "--from", &url, t.to_str().unwrap()]);
    assert_eq!(
        std::fs::read_to_string(t.join("MEMORY.md")).unwrap(),
        MEMORY
    );
    assert!(t.join("NEW.md").exists());
}

fn daemon_pid(dir: &Path) -> Option<u32> {
    let dir = dir.to_str().unwrap();
    common::processes()
        .into_iter()
        .find(|(_, args)| args.iter().any(|a| a == "--foreground") && args.iter().any(|a| a == dir))
        .map(|(pid, _)| pid)
}

fn random_bytes(n: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// The packs in the bucket.
fn packs(s3: &S3s) -> Vec<std::path::PathBuf> {
    let mut p = s3.objects();
    p.retain(|o| o.to_string_lossy().contains("/packs/"));
    p
}

/// A restore from a long history downloads the packs its moment is made of, not the history;
/// a pack only older moments need can go missing without stopping it, and a moment that needs
/// it is refused with nothing written.
#[test]
fn a_restore_fetches_only_the_packs_its_moment_needs() {
    let s3 = S3s::start();
    let sb = Sandbox::new();
    s3_remote(&sb, &s3, PASS, &[]);
    sb.mount();
    let old = random_bytes(3 << 20, 1);
    sb.write("workspace/blob.bin", &old);
    sb.settle();
    sb.ok(&["mark", "old"]);
    sb.ok(&["push", "--wait"]);
    let old_packs = packs(&s3);
    assert!(!old_packs.is_empty());
    for seed in 2..6u64 {
        sb.write("workspace/blob.bin", &random_bytes(3 << 20, 2 * seed + 1));
        sb.write("MEMORY.md", format!("round {seed}\n").as_bytes());
        sb.settle();
        sb.ok(&["push", "--wait"]);
    }
    let now = snapshot(&sb.dir);
    sb.unmount();
    let all_packs = packs(&s3);
    let bucket: u64 = all_packs
        .iter()
        .map(|p| std::fs::metadata(p).unwrap().len())
        .sum();

    let nm = new_machine();
    let restore_json = |name: &str, extra: &[&str]| {
        let mut args = vec!["--json"];
        args.extend_from_slice(extra);
        let target = nm.home.path().join(name);
        let out = restore_from_s3(&nm, &s3, &target, &args);
        (target, out)
    };
    // A restore `--at old` into `name`, refused in one line naming `why`, with nothing written.
    let old_is_refused = |name: &str, why: &str| {
        let (target, out) = restore_json(name, &["--at", "old"]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "restored the old moment: {err}");
        assert!(err.contains(why), "{err}");
        assert_eq!(err.trim().lines().count(), 1, "one clear line: {err}");
        assert!(!target.exists(), "nothing may be written to the target");
    };
    let (target, out) = restore_json("now", &[]);
    common::assert_ok(&out);
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["packs"]["of"], all_packs.len(), "{report}");
    let fetched = report["packs"]["fetched"].as_u64().unwrap();
    assert!(
        fetched >= 1 && fetched + 3 <= all_packs.len() as u64,
        "{report}"
    );
    let down = report["traffic"]["bytes_down"].as_u64().unwrap();
    assert!(down < bucket / 3, "{down} of {bucket} bytes: {report}");
    assert_eq!(snapshot(&target), now);

    // The old moment comes back too, from the packs it needs.
    let (target, out) = restore_json("old", &["--at", "old"]);
    common::assert_ok(&out);
    assert_eq!(
        std::fs::read(target.join("workspace/blob.bin")).unwrap(),
        old
    );

    // `verify --remote` reads everything, and finds it whole.
    let ep = s3.endpoint();
    let verify = |json: bool| {
        let mut args = s3_args(&["verify", "--remote"], "s3://bkt/agent", &ep, &[]);
        if json {
            args.push("--json");
        }
        nm.raw(&args)
    };
    let out = verify(true);
    common::assert_ok(&out);
    let whole: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(whole["packs"], all_packs.len(), "{whole}");
    assert_eq!(whole["problems"].as_array().unwrap().len(), 0, "{whole}");
    assert!(whole["traffic"]["bytes_down"].as_u64().unwrap() >= bucket);
    assert!(String::from_utf8_lossy(&verify(false).stdout).contains("no damage found"));
    // On the first machine, `--remote` alone checks its one configured remote.
    let out = sb.raw(&["verify", "--remote", "--json"]);
    common::assert_ok(&out);
    let mine: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(mine["packs"], all_packs.len(), "{mine}");
    assert!(mine["remote"].as_str().unwrap().contains("bkt"), "{mine}");
    // Two halves read every pack once between them; a subset that is not N/T is refused.
    let half = |n: &str| {
        let mut args = s3_args(&["verify", "--remote"], "s3://bkt/agent", &ep, &[]);
        args.extend_from_slice(&["--json", "--subset", n]);
        nm.raw(&args)
    };
    let halves: Vec<serde_json::Value> = ["1/2", "2/2"]
        .iter()
        .map(|n| {
            let out = half(n);
            common::assert_ok(&out);
            serde_json::from_slice(&out.stdout).unwrap()
        })
        .collect();
    let read: u64 = halves.iter().map(|h| h["packs"].as_u64().unwrap()).sum();
    assert_eq!(read as usize, all_packs.len(), "{halves:?}");
    let out = half("3/2");
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("1 <= N <= T"),
        "{out:?}"
    );
    // An object no log names (as a push cut short leaves) is listed, and is not damage.
    let stray = old_packs[0].with_file_name("0000stray");
    std::fs::copy(&old_packs[0], &stray).unwrap();
    let out = verify(true);
    common::assert_ok(&out);
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        r["unreferenced"],
        serde_json::json!(["packs/0000stray"]),
        "{r}"
    );
    std::fs::remove_file(&stray).unwrap();

    // A flipped byte in a pack only the old moment needs: the newest moment still restores,
    // and `verify --remote` names the pack.
    let good = std::fs::read(&old_packs[0]).unwrap();
    let mut bad = good.clone();
    bad[good.len() / 2] ^= 1;
    std::fs::write(&old_packs[0], &bad).unwrap();
    let (target, out) = restore_json("now-tampered", &[]);
    common::assert_ok(&out);
    assert_eq!(snapshot(&target), now);
    let out = verify(false);
    let (said, err) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert_eq!(out.status.code(), Some(1), "{said}{err}");
    let name = old_packs[0].file_name().unwrap().to_string_lossy();
    assert!(
        said.lines()
            .any(|l| l.contains(&*name) && l.contains("tampered")),
        "{said}"
    );
    assert!(err.contains("2 problems found"), "{err}");
    assert!(said.contains("held by no intact pack"), "{said}");
    // The old moment needs that pack.
    old_is_refused("old-tampered", "tampered");
    std::fs::write(&old_packs[0], &good).unwrap();

    // The packs only the old moment needs go missing.
    for p in &old_packs {
        std::fs::remove_file(p).unwrap();
    }
    let (target, out) = restore_json("now-again", &[]);
    common::assert_ok(&out);
    assert_eq!(snapshot(&target), now);
    let out = verify(false);
    let said = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{said}");
    assert!(said.contains("held by no intact pack"), "{said}");
    assert!(said.contains("is missing on the remote"), "{said}");
    old_is_refused("old-again", "missing");
}

#[test]
fn pushes_survive_a_server_outage_and_a_killed_daemon() {
    let mut s3 = S3s::start();
    let sb = Sandbox::new();
    s3_remote(&sb, &s3, PASS, &[]);
    sb.mount();
    // The server goes away mid-push: the replicator keeps the error and retries.
    for i in 0..4 {
        sb.write(&format!("data/part{i}.bin"), &random_bytes(6 << 20, i + 1));
    }
    let t0 = Instant::now();
    while s3
        .objects()
        .iter()
        .all(|p| !p.to_string_lossy().contains("/packs/"))
        && t0.elapsed() < Duration::from_secs(20)
    {
        std::thread::sleep(Duration::from_millis(5));
    }
    s3.kill();
    sb.write(
        "data/during-outage.txt",
        b"written while the server was down\n",
    );
    sb.settle();
    eventually("the outage to show in status", || {
        sb.ok(&["status"]).contains("last error")
    });
    s3.restart();
    sb.ok(&["push", "--wait"]);
    assert!(!sb.ok(&["status"]).contains("last error"));

    // The daemon dies mid-push: the next mount resumes from the persistent cursor.
    for i in 4..8 {
        sb.write(&format!("data/part{i}.bin"), &random_bytes(6 << 20, i + 1));
    }
    let before = s3.objects().len();
    let t0 = Instant::now();
    while s3.objects().len() == before && t0.elapsed() < Duration::from_secs(20) {
        std::thread::sleep(Duration::from_millis(5));
    }
    let pid = daemon_pid(&sb.dir).expect("daemon pid");
    // SAFETY: sending a signal to a process we started.
    unsafe { libc::kill(pid as i32, libc::SIGKILL) };
    eventually("the mount to go away", || !sb.is_mounted());
    sb.mount();
    sb.ok(&["push", "--wait"]);
    let now = snapshot(&sb.dir);
    sb.unmount();

    let nm = new_machine();
    let target = restore_ok(&nm, &s3, "r", &[]);
    assert_eq!(snapshot(&target), without_secrets(now));
}

#[test]
fn a_small_change_after_a_full_push_uploads_one_pack_and_one_segment() {
    let s3 = S3s::start();
    let sb = Sandbox::new();
    s3_remote(&sb, &s3, PASS, &["--schedule", "daily"]);
    sb.mount();
    populate(&sb);
    sb.write("big.log", &random_bytes(3 << 20, 7));
    sb.settle();
    sb.ok(&["push", "--wait"]);
    sb.sh("head -c 1024 /dev/urandom >> big.log");
    sb.settle();
    let r = &sb.json(&["push", "--wait"])[0][0];
    assert_eq!(r["packs"], 1, "{r}");
    assert!(
        r["traffic"]["puts"].as_u64().unwrap() <= 3,
        "pack, index, log segment: {r}"
    );
    assert!(r["traffic"]["bytes_up"].as_u64().unwrap() < 100_000, "{r}");
    sb.unmount();
}

#[test]
fn moto_round_trip_and_clear_errors_for_bad_endpoints_buckets_and_keys() {
    let moto = Moto::start();
    let sb = Sandbox::new();
    sb.set_env("CLAWFS_PASSPHRASE", PASS);
    sb.set_env("AWS_ACCESS_KEY_ID", "moto");
    sb.set_env("AWS_SECRET_ACCESS_KEY", "moto");
    let ep = moto.endpoint();
    // moto signs a '/' inside a list prefix unlike the SigV4 spec, so the repository sits at
    // the bucket's root here (s3s-fs, which checks signatures, covers prefixes).
    let url = format!("s3://{BUCKET}");
    sb.ok(&s3_args(&["remote", "add", "moto"], &url, &ep, &[]));
    sb.mount();
    populate(&sb);
    sb.settle();
    sb.ok(&["push", "--wait"]);
    let now = snapshot(&sb.dir);
    sb.unmount();
    let nm = Sandbox::new();
    nm.set_env("CLAWFS_PASSPHRASE", PASS);
    nm.set_env("AWS_ACCESS_KEY_ID", "moto");
    nm.set_env("AWS_SECRET_ACCESS_KEY", "moto");
    let t = nm.home.path().join("t");
    nm.ok(&s3_args(
        &["restore", "--from"],
        &url,
        &ep,
        &[t.to_str().unwrap()],
    ));
    assert_eq!(snapshot(&t), without_secrets(now));

    let err = sb.fails(&s3_args(
        &["remote", "add", "nb"],
        "s3://no-such-bucket",
        &ep,
        &[],
    ));
    assert!(err.contains("bucket does not exist"), "{err}");
    sb.set_env("CLAWFS_REMOTE_RETRIES", "1");
    let err = sb.fails(&s3_args(
        &["remote", "add", "down"],
        "s3://b",
        "http://127.0.0.1:9",
        &[],
    ));
    assert!(err.contains("Connection refused"), "{err}");
    let s3 = S3s::start();
    sb.set_env("AWS_SECRET_ACCESS_KEY", "wrong");
    let ep = s3.endpoint();
    let err = sb.fails(&s3_args(&["remote", "add", "keys"], "s3://bkt/x", &ep, &[]));
    assert!(err.contains("access denied"), "{err}");
    assert_eq!(
        sb.ok(&["remote", "list"]).lines().count(),
        1,
        "failed adds leave no remote"
    );
}

#[test]
fn stored_access_keys_passwd_restore_if_empty_and_two_devices_in_one_bucket() {
    let s3 = S3s::start();
    let ep = s3.endpoint();
    let a = Sandbox::new();
    let pass_file = a.home.path().join("pass");
    std::fs::write(&pass_file, format!("{PASS}\n")).unwrap();
    let pf = pass_file.to_str().unwrap();
    // Access keys given once: stored sealed, never in plain text.
    a.set_env("CLAWFS_SECRET_ACCESS_KEY", SECRET_KEY);
    a.ok(&s3_args(
        &["--passphrase-file", pf, "remote", "add", "origin"],
        "s3://bkt/agent",
        &ep,
        &["--access-key-id", ACCESS_KEY],
    ));
    let remotes = std::fs::read_to_string(a.store.join("remotes.json")).unwrap();
    assert!(!remotes.contains(SECRET_KEY));
    let mode = std::fs::metadata(a.store.join("remotes.json"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    a.ok(&["--passphrase-file", pf, "mount", a.dir.to_str().unwrap()]);
    a.write("MEMORY.md", MEMORY.as_bytes());
    a.settle();
    a.ok(&["push", "--wait"]);
    a.unmount();

    // A new passphrase re-wraps the key and uploads nothing else.
    let before: Vec<_> = s3.objects();
    a.set_env("CLAWFS_NEW_PASSPHRASE", "a brand new passphrase");
    a.ok(&["--passphrase-file", pf, "remote", "passwd", "origin"]);
    assert_eq!(s3.objects(), before);
    let b = new_machine();
    let err = b.fails(&s3_args(
        &["remote", "add", "origin"],
        "s3://bkt/agent",
        &ep,
        &[],
    ));
    assert!(err.contains("wrong passphrase"), "{err}");
    b.set_env("CLAWFS_PASSPHRASE", "a brand new passphrase");
    let added = b.ok(&s3_args(
        &["remote", "add", "origin"],
        "s3://bkt/agent",
        &ep,
        &[],
    ));
    assert!(added.contains("opened the existing"), "{added}");
    // The new machine: an empty directory is filled from the remote, then mounted.
    b.ok(&["mount", "--restore-if-empty", b.dir.to_str().unwrap()]);
    assert!(b.is_mounted());
    assert_eq!(
        std::fs::read_to_string(b.path("MEMORY.md")).unwrap(),
        MEMORY
    );
    assert!(b.ok(&["log"]).contains("MEMORY.md"));
    b.unmount();

    // A second machine with its own history shares the bucket under its own device id.
    let c = new_machine();
    c.set_env("CLAWFS_PASSPHRASE", "a brand new passphrase");
    c.ok(&s3_args(
        &["remote", "add", "origin"],
        "s3://bkt/agent",
        &ep,
        &[],
    ));
    c.mount();
    c.write("OTHER.md", b"another machine\n");
    c.settle();
    c.ok(&["push", "--wait"]);
    // Its own history by default, even while the daemon holds its store.
    let own = c.home.path().join("own");
    c.ok(&["restore", "--from", "origin", own.to_str().unwrap()]);
    assert_eq!(
        std::fs::read(own.join("OTHER.md")).unwrap(),
        b"another machine\n"
    );
    assert!(
        !own.join("MEMORY.md").exists(),
        "not the other device's tree"
    );
    c.unmount();
    let devices = c.ok(&["remote", "devices"]);
    assert_eq!(devices.lines().count(), 2, "{devices}");
    // A machine of its own restores its own device by default; a stranger must pick one.
    let d = new_machine();
    d.set_env("CLAWFS_PASSPHRASE", "a brand new passphrase");
    let target = d.home.path().join("t");
    let t = target.to_str().unwrap();
    let err = d.fails(&s3_args(
        &["restore", "--from"],
        "s3://bkt/agent",
        &ep,
        &[t],
    ));
    assert!(err.contains("--device"), "{err}");
    assert!(!target.exists());
    let other = devices
        .lines()
        .map(|l| l.split('\t').next().unwrap().to_string())
        .find(|d| {
            c.ok(&[
                "restore",
                "--from",
                "origin",
                "--device",
                d,
                c.home.path().join(d).to_str().unwrap(),
            ])
            .contains("restored")
        })
        .unwrap();
    assert!(!other.is_empty());
}

/// `(device, inode)` of each path, relative to `root`.
fn inodes(root: &Path, paths: &[&str]) -> Vec<(u64, u64)> {
    paths
        .iter()
        .map(|p| {
            let m = std::fs::symlink_metadata(root.join(p)).unwrap();
            (m.dev(), m.ino())
        })
        .collect()
}

/// A file with several names (hard links) comes back as one file under them all: from a
/// restore, on a new machine's checkout, and from a rollback, which also makes names that were
/// one file then and are not now one again (and the other way round). A write through one name
/// after the rollback is then the others' too, in the files and in the history.
#[test]
fn hard_links_come_back_as_links_from_restore_clone_and_rollback() {
    let (_remote_dir, url) = common::file_remote();
    let sb = Sandbox::new();
    sb.set_env("CLAWFS_PASSPHRASE", PASS);
    sb.ok(&["remote", "add", "nas", &url]);
    sb.mount();
    sb.write("notes/a.md", b"one file, three names\n");
    sb.write("apart.md", b"one file, three names\n");
    sb.write("pair.md", b"two files, then one\n");
    sb.write("pair2.md", b"two files, then one\n");
    sb.sh("ln notes/a.md b.md && mkdir -p deep && ln notes/a.md deep/c.md");
    sb.ok(&["mark", "linked"]);
    let names = ["notes/a.md", "b.md", "deep/c.md"];

    // Restore: the three names are one file, and a file with the same bytes stays apart.
    let out = sb.home.path().join("restored");
    let said = sb.ok(&["restore", "--at", "linked", out.to_str().unwrap()]);
    assert!(said.contains("2 further hard link(s)"), "{said}");
    let ino = inodes(&out, &["notes/a.md", "b.md", "deep/c.md", "apart.md"]);
    assert!(ino[0] == ino[1] && ino[1] == ino[2], "{ino:?}");
    assert_ne!(ino[0], ino[3]);

    // A new machine's checkout.
    sb.ok(&["push", "--wait"]);
    let nm = Sandbox::new();
    nm.set_env("CLAWFS_PASSPHRASE", PASS);
    std::fs::remove_dir(&nm.dir).unwrap();
    nm.ok(&["clone", "--from", &url]);
    let ino = inodes(&nm.dir, &names);
    assert!(ino[0] == ino[1] && ino[1] == ino[2], "{ino:?}");

    // Break the links every way, and link two files that were apart.
    sb.sh("rm notes/a.md && cp b.md b.tmp && mv b.tmp b.md && rm pair2.md && ln pair.md pair2.md");
    sb.ok(&["mark", "broken"]);
    let ino = inodes(&sb.dir, &["b.md", "deep/c.md"]);
    assert_ne!(ino[0], ino[1]);
    sb.ok(&["rollback", "--to", "linked", "--yes"]);
    let ino = inodes(&sb.dir, &names);
    assert!(ino[0] == ino[1] && ino[1] == ino[2], "{ino:?}");
    let pair = inodes(&sb.dir, &["pair.md", "pair2.md"]);
    assert_ne!(pair[0], pair[1], "pair.md and pair2.md were two files then");
    std::fs::write(sb.path("b.md"), "written through one name\n").unwrap();
    assert_eq!(
        std::fs::read_to_string(sb.path("notes/a.md")).unwrap(),
        "written through one name\n"
    );
    sb.ok(&["mark", "after"]);
    for n in names {
        assert_eq!(
            sb.ok(&["cat", n, "--at", "after"]),
            "written through one name\n",
            "{n}"
        );
    }
    assert_eq!(
        sb.ok(&["cat", "pair.md", "--at", "after"]),
        "two files, then one\n"
    );
    // The moment holds the tree's names, and nothing of how the rollback put them in place.
    let at_after = sb.home.path().join("after");
    sb.ok(&["restore", "--at", "after", at_after.to_str().unwrap()]);
    let mut listed: Vec<String> = snapshot(&at_after).into_keys().collect();
    listed.sort();
    assert_eq!(
        listed,
        [
            "apart.md",
            "b.md",
            "deep",
            "deep/c.md",
            "notes",
            "notes/a.md",
            "pair.md",
            "pair2.md"
        ]
    );

    // And back to the broken links, which come back broken.
    sb.ok(&["rollback", "--to", "broken", "--yes"]);
    let ino = inodes(&sb.dir, &["b.md", "deep/c.md", "pair.md", "pair2.md"]);
    assert_ne!(ino[0], ino[1]);
    assert_eq!(ino[2], ino[3]);
    assert!(!sb.path("notes/a.md").exists());
    sb.unmount();
}
