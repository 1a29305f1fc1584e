//! Time-travel views over a long history, through the real `clawfs browse` daemon: a store of
//! 10,000 files in 100 directories with 1,000,000 versions (100 epochs that each change every
//! file) and a 100 MiB file, then
//!   - time from starting the daemon to listing the view's root  [target < 1 s],
//!   - `ls -R` of a past moment                                   [target < 2 s],
//!   - sequential read of the past 100 MiB file, caches dropped   [target ≥ 500 MB/s],
//!   - the daemon's peak RSS over all of it                       [target ≤ 100 MB].
//!
//! Run with `cargo bench --bench browse` (root, /dev/fuse). Building the history takes minutes:
//! with `CLAWFS_BROWSE_STORE=DIR` it is built there once and reused by later runs. `cargo test
//! --benches` runs a tiny version as a smoke test.

use std::io::{BufRead, Read};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Instant;

use clawfs::ids::SessionId;
use clawfs::relpath::RelPath;
use clawfs::store::catalog::{Meta, NodeKind};
use clawfs::store::Store;
use rand::{RngCore, SeedableRng};

const META: Meta = Meta {
    mode: 0o644,
    uid: 0,
    gid: 0,
    mtime_ns: 0,
};

/// Builds the history; returns the moment to browse (between the big file's two versions).
fn build(dir: &Path, dirs: usize, files_per_dir: usize, epochs: usize, big: u64) -> u64 {
    let store = Store::open_or_create(dir).unwrap();
    let mut rec = store.recorder(SessionId(1)).unwrap();
    let p = |s: &str| RelPath::new(s).unwrap();
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let mut past = 0;
    let t = Instant::now();
    for e in 0..epochs {
        for d in 0..dirs {
            if e == 0 {
                rec.create(
                    &p(&format!("d{d:03}")),
                    NodeKind::Dir,
                    Meta {
                        mode: 0o755,
                        ..META
                    },
                    "",
                )
                .unwrap();
            }
            for f in 0..files_per_dir {
                let path = p(&format!("d{d:03}/f{f:03}.md"));
                if e == 0 {
                    rec.create(&path, NodeKind::File, META, "").unwrap();
                }
                let line = format!(
                    "# note {d}/{f}\nversion {e:06} of this file, {}\n",
                    "x".repeat(64)
                );
                rec.write(&path, 0, line.as_bytes()).unwrap();
            }
        }
        // The big file: written at a third of the history, rewritten at two thirds.
        if e == epochs / 3 || e == 2 * epochs / 3 {
            if e == epochs / 3 {
                rec.create(&p("big.bin"), NodeKind::File, META, "").unwrap();
            }
            let mut buf = vec![0u8; 1 << 20];
            for off in (0..big).step_by(1 << 20) {
                rng.fill_bytes(&mut buf);
                rec.write(&p("big.bin"), off, &buf).unwrap();
            }
        }
        let seq = rec.commit(false).unwrap().expect("changes").seq.0;
        // The middle of the history: the big file's first version.
        if e == epochs / 2 {
            past = seq;
        }
    }
    store.flush().unwrap();
    println!(
        "history: {} files, {} versions, {} MiB file, built in {:.1?}",
        dirs * files_per_dir,
        dirs * files_per_dir * epochs,
        big >> 20,
        t.elapsed()
    );
    past
}

fn peak_rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches(" kB").parse().ok())
        .unwrap_or(0)
}

fn drop_caches() {
    let _ = Command::new("sync").status();
    let _ = std::fs::write("/proc/sys/vm/drop_caches", "3");
}

fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    let (dirs, per_dir, epochs, big) = if full {
        (100, 100, 100, 100u64 << 20)
    } else {
        (4, 5, 6, 4u64 << 20)
    };
    let work = tempfile::Builder::new()
        .prefix("clawfs-browse-bench-")
        .tempdir()
        .unwrap();
    let store = match std::env::var_os("CLAWFS_BROWSE_STORE").filter(|_| full) {
        Some(d) => std::path::PathBuf::from(d),
        None => work.path().join("store"),
    };
    let seq_file = store.join("bench-moment");
    let seq = match std::fs::read_to_string(&seq_file) {
        Ok(s) => s.trim().parse().unwrap(),
        Err(_) => {
            let seq = build(&store, dirs, per_dir, epochs, big);
            std::fs::write(&seq_file, seq.to_string()).unwrap();
            seq
        }
    };
    let mp = work.path().join("view");
    std::fs::create_dir(&mp).unwrap();

    drop_caches();
    let t = Instant::now();
    let mut daemon = Command::new(env!("CARGO_BIN_EXE_clawfs"))
        .arg("--store")
        .arg(&store)
        .args(["browse", "--foreground"])
        .arg(&mp)
        .env("CLAWFS_LOG", "warn")
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut ready = String::new();
    std::io::BufReader::new(daemon.stdout.take().unwrap())
        .read_line(&mut ready)
        .unwrap();
    assert_eq!(ready.trim(), "ready", "the view did not start");
    let top = std::fs::read_dir(&mp).unwrap().count();
    let mount = t.elapsed();
    assert!(top > 0);

    let moment = mp.join("at").join(format!("#{seq}"));
    let t = Instant::now();
    let out = Command::new("ls").arg("-R").arg(&moment).output().unwrap();
    let ls = t.elapsed();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let entries = out
        .stdout
        .split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .count();

    drop_caches();
    let t = Instant::now();
    let mut f = std::fs::File::open(moment.join("big.bin")).unwrap();
    let mut buf = vec![0u8; 1 << 20];
    let mut n = 0u64;
    loop {
        let k = f.read(&mut buf).unwrap();
        if k == 0 {
            break;
        }
        n += k as u64;
    }
    let read = t.elapsed();
    drop(f);
    assert_eq!(n, big);
    let rss = peak_rss_kib(daemon.id());

    let unmounted = Command::new("fusermount3").arg("-u").arg(&mp).status();
    if !unmounted.is_ok_and(|s| s.success()) {
        let _ = daemon.kill();
    }
    let _ = daemon.wait();
    println!("| measure | result | target |");
    println!("|---|---|---|");
    println!(
        "| mount (start to first listing) | {:.0} ms | < 1 s |",
        mount.as_secs_f64() * 1e3
    );
    println!(
        "| `ls -R` of moment {seq} ({entries} lines) | {:.0} ms | < 2 s |",
        ls.as_secs_f64() * 1e3
    );
    println!(
        "| read the past {} MiB file, cold | {:.0} MB/s | ≥ 500 MB/s |",
        big >> 20,
        n as f64 / read.as_secs_f64() / 1e6
    );
    println!(
        "| daemon peak RSS | {:.0} MiB | ≤ 100 MB |",
        rss as f64 / 1024.0
    );
}
