//! An epoch reported durable survives a crash of the process at any instant, and nothing is
//! half-visible: a child commits in a loop and is killed at random; the parent reopens the store.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use clawfs::ids::{Seq, SessionId};
use clawfs::relpath::RelPath;
use clawfs::store::catalog::{Meta, NodeKind};
use clawfs::store::recorder::RenameMode;
use clawfs::store::Store;

const FILES: [&str; 3] = ["a", "b", "dir/c"];

/// A generation's content: 16 KiB that does not compress (so packs fill, are sealed and
/// indexed while the child is killed), then a run of one digit.
fn content(generation: u64) -> Vec<u8> {
    let mut v = format!("generation {generation}\n").into_bytes();
    let mut x = generation.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    for _ in 0..2048 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        v.extend_from_slice(&x.to_le_bytes());
    }
    v.resize(
        20_000 + (generation as usize * 7919) % 70_000,
        b'0' + (generation % 10) as u8,
    );
    v
}

/// The child: every epoch rewrites all files with one generation (via temp + rename for one of
/// them); after each durable commit it prints the generation.
fn child(dir: &str) {
    let store = Store::open_or_create(std::path::Path::new(dir)).unwrap();
    let mut rec = store.recorder(SessionId(7)).unwrap();
    let meta = Meta {
        mode: 0o644,
        ..Default::default()
    };
    let p = |s: &str| RelPath::new(s).unwrap();
    let start = store.head().0;
    if start == 0 {
        rec.create(&p("dir"), NodeKind::Dir, meta, "").unwrap();
        for f in FILES {
            rec.create(&p(f), NodeKind::File, meta, "").unwrap();
        }
    }
    for g in start + 1.. {
        let data = content(g);
        for f in &FILES[..2] {
            rec.truncate(&p(f), 0).unwrap();
            rec.write(&p(f), 0, &data).unwrap();
        }
        rec.create(&p("dir/c.tmp"), NodeKind::File, meta, "")
            .unwrap();
        rec.write(&p("dir/c.tmp"), 0, &data).unwrap();
        rec.rename(&p("dir/c.tmp"), &p("dir/c"), RenameMode::Replace)
            .unwrap();
        let c = rec.commit(g % 3 == 0).unwrap().unwrap();
        if g % 3 == 0 {
            println!("{} {}", c.seq.0, g);
        }
    }
}

#[test]
fn durable_epochs_survive_kill_9_and_nothing_is_half_visible() {
    if let Ok(dir) = std::env::var("CLAWFS_CRASH_CHILD") {
        child(&dir);
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut reported: Vec<(u64, u64)> = Vec::new();
    for round in 0..12u64 {
        let mut c = Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "durable_epochs_survive_kill_9_and_nothing_is_half_visible",
                "--nocapture",
            ])
            .env("CLAWFS_CRASH_CHILD", dir.path())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(c.stdout.take().unwrap()).lines();
        let want = 5 + (round * 13) % 40;
        let mut n = 0;
        while n < want {
            let Some(Ok(l)) = lines.next() else { break };
            let mut it = l.split_whitespace();
            if let (Some(Ok(seq)), Some(Ok(g))) =
                (it.next().map(str::parse), it.next().map(str::parse))
            {
                reported.push((seq, g));
                n += 1;
            }
        }
        c.kill().unwrap();
        c.wait().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let head = store.head();
        for &(seq, g) in &reported {
            assert!(Seq(seq) <= head, "durable epoch {seq} lost (head {head})");
            for f in FILES {
                let got = store
                    .read_file(&RelPath::new(f).unwrap(), Seq(seq))
                    .unwrap();
                assert_eq!(got, content(g), "epoch {seq}, {f}");
            }
        }
        // Every committed epoch is whole: all files carry one generation.
        for s in 2..=head.0 {
            let gens: Vec<Vec<u8>> = FILES
                .iter()
                .map(|f| store.read_file(&RelPath::new(f).unwrap(), Seq(s)).unwrap())
                .collect();
            assert!(
                gens.windows(2).all(|w| w[0] == w[1]),
                "epoch {s} is half-visible"
            );
            assert!(!store
                .walk(&RelPath::root(), Seq(s))
                .unwrap()
                .iter()
                .any(|(p, _)| p.as_str() == "dir/c.tmp"));
        }
        drop(store);
    }
    assert!(reported.len() > 100);
    let store = Store::open(dir.path()).unwrap();
    assert!(store.packs().verify_all().unwrap() > 0);
    let (files, indexed, _) = store.packs().index().stats();
    assert!(
        files > 0 && indexed > 0,
        "packs were sealed and indexed under the kills"
    );
}
