//! 1 GiB of mixed churn through the store (appends, in-place writes into a 100 MiB file,
//! temp + rename rewrites, new files), then: store size on disk against the compressed unique
//! chunk bytes [target ≤ 1.3×], and the process's peak RSS [target ≤ 150 MB].
//! Run with `cargo bench --bench churn`.

use clawfs::ids::SessionId;
use clawfs::relpath::RelPath;
use clawfs::store::catalog::{Meta, NodeKind};
use clawfs::store::recorder::RenameMode;
use clawfs::store::Store;
use rand::{Rng, RngCore, SeedableRng};

const META: Meta = Meta {
    mode: 0o644,
    uid: 0,
    gid: 0,
    mtime_ns: 0,
};

fn main() {
    // `cargo bench` passes --bench; anything else (cargo test --benches) runs a tiny version.
    let full = std::env::args().any(|a| a == "--bench");
    let total: u64 = if full { 1 << 30 } else { 32 << 20 };
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open_or_create(dir.path()).unwrap();
    let mut rec = store.recorder(SessionId(1)).unwrap();
    let p = |s: &str| RelPath::new(s).unwrap();
    let mut rng = rand::rngs::StdRng::seed_from_u64(42);
    let mut buf = vec![0u8; 1 << 20];
    rec.create(&p("db"), NodeKind::File, META, "").unwrap();
    let db_size: u64 = if full { 100 << 20 } else { 8 << 20 };
    for off in (0..db_size).step_by(1 << 20) {
        rng.fill_bytes(&mut buf);
        rec.write(&p("db"), off, &buf).unwrap();
    }
    rec.commit(false).unwrap();
    rec.create(&p("log.jsonl"), NodeKind::File, META, "")
        .unwrap();
    let (mut log_size, mut churn, mut n) = (0u64, db_size, 0u64);
    let start = std::time::Instant::now();
    while churn < total {
        n += 1;
        match n % 4 {
            0 => {
                // Append 64 KiB of JSON-ish text to a transcript.
                let line = format!(
                    "{{\"n\":{n},\"text\":\"{}\"}}\n",
                    "word ".repeat(rng.gen_range(10..400))
                );
                let mut chunk = Vec::new();
                while chunk.len() < 64 << 10 {
                    chunk.extend_from_slice(line.as_bytes());
                }
                rec.write(&p("log.jsonl"), log_size, &chunk).unwrap();
                log_size += chunk.len() as u64;
                churn += chunk.len() as u64;
            }
            1 => {
                // Sixteen 4 KiB pages rewritten in place.
                for _ in 0..16 {
                    let off = rng.gen_range(0..db_size / 4096) * 4096;
                    rng.fill_bytes(&mut buf[..4096]);
                    rec.write(&p("db"), off, &buf[..4096]).unwrap();
                    churn += 4096;
                }
            }
            2 => {
                // A 256 KiB text file rewritten through temp + rename with a change near the top.
                let name = format!("notes-{}.md", n % 50);
                let mut body = format!("# note {n}\n").into_bytes();
                while body.len() < 256 << 10 {
                    body.extend_from_slice(b"the agent remembered something useful today\n");
                }
                rec.create(&p("tmp.md"), NodeKind::File, META, "").unwrap();
                rec.write(&p("tmp.md"), 0, &body).unwrap();
                rec.rename(&p("tmp.md"), &p(&name), RenameMode::Replace)
                    .unwrap();
                churn += body.len() as u64;
            }
            _ => {
                // A new 1 MiB file of random bytes.
                rng.fill_bytes(&mut buf);
                let name = format!("blob-{n}");
                rec.create(&p(&name), NodeKind::File, META, "").unwrap();
                rec.write(&p(&name), 0, &buf).unwrap();
                churn += buf.len() as u64;
            }
        }
        rec.commit(false).unwrap();
    }
    store.flush().unwrap();
    let elapsed = start.elapsed();
    let packs: u64 = store.packs().packs().unwrap().iter().map(|p| p.1).sum();
    let records = store.packs().verify_all().unwrap();
    let overhead = records * clawfs::store::pack::RECORD_OVERHEAD;
    let unique = packs - overhead;
    let disk = store.disk_usage().unwrap();
    // SAFETY: getrusage writes into the struct we pass.
    let rss_kib = unsafe {
        let mut u: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_SELF, &mut u);
        u.ru_maxrss
    };
    println!(
        "churn: {:.0} MiB in {n} epochs, {:.1} s ({:.0} MB/s)",
        churn as f64 / 1048576.0,
        elapsed.as_secs_f64(),
        churn as f64 / 1e6 / elapsed.as_secs_f64()
    );
    println!(
        "compressed unique chunk bytes: {:.1} MiB ({records} chunks)",
        unique as f64 / 1048576.0
    );
    println!(
        "store on disk: {:.1} MiB (packs {:.1} MiB, catalogue {:.1} MiB) = {:.2}x the unique bytes",
        disk as f64 / 1048576.0,
        packs as f64 / 1048576.0,
        (disk - packs) as f64 / 1048576.0,
        disk as f64 / unique as f64
    );
    println!("peak RSS: {:.0} MiB", rss_kib as f64 / 1024.0);
}
