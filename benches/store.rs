//! Version-store benchmarks (issue targets in brackets):
//! 1. ingest of new incompressible data (chunk + hash + compress + pack)  [≥ 500 MB/s, one core]
//! 2. append 1 KiB to a 1 / 10 / 100 MiB file and commit                [≤ 64 KiB new, flat]
//! 3. a 4 KiB in-place write into a 100 MiB file                          [≤ 64 KiB new]
//! 4. a 1 MiB text file rewritten via temp + rename, one line inserted    [≤ 128 KiB new]
//! 5. read a file as of a moment among 100,000 versions                   [< 1 ms]
//!    list a 10,000-entry directory as of a moment                        [< 100 ms]
//!
//! Byte counts are printed as `bytes: ...` lines; times by criterion.

use std::sync::Arc;
use std::time::Duration;

use clawfs::ids::{Seq, SessionId};
use clawfs::relpath::RelPath;
use clawfs::store::catalog::{Meta, NodeKind};
use clawfs::store::content::ReadAt;
use clawfs::store::recorder::{Recorder, RenameMode};
use clawfs::store::Store;
use criterion::{criterion_group, criterion_main, BatchSize, BenchmarkId, Criterion, Throughput};
use rand::{RngCore, SeedableRng};

fn random(n: usize, seed: u64) -> Vec<u8> {
    let mut v = vec![0u8; n];
    rand::rngs::StdRng::seed_from_u64(seed).fill_bytes(&mut v);
    v
}

fn p(s: &str) -> RelPath {
    RelPath::new(s).unwrap()
}

const META: Meta = Meta {
    mode: 0o644,
    uid: 0,
    gid: 0,
    mtime_ns: 0,
};

/// Prints the median, 99th percentile and largest of the bytes stored per commit, and how many
/// commits stored more than 64 KiB; nothing when the benchmark was filtered out and never ran.
fn print_bytes(what: &str, stored: &mut [u64]) {
    stored.sort_unstable();
    if let Some(max) = stored.last() {
        let median = stored[stored.len() / 2];
        let p99 = stored[stored.len() * 99 / 100];
        let over = stored.iter().filter(|&&b| b > 64 << 10).count();
        println!(
            "bytes: {what}: median {median} B, p99 {p99} B, max {max} B stored; \
             {over} of {} commits over 64 KiB",
            stored.len()
        );
    }
}

fn fresh() -> (tempfile::TempDir, Arc<Store>, Recorder) {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open_or_create(dir.path()).unwrap();
    let rec = store.recorder(SessionId(1)).unwrap();
    (dir, store, rec)
}

fn ingest(c: &mut Criterion) {
    let data = random(64 << 20, 1);
    let mut g = c.benchmark_group("ingest");
    g.sample_size(10).measurement_time(Duration::from_secs(20));
    g.throughput(Throughput::Bytes(data.len() as u64));
    g.bench_function("64MiB_incompressible", |b| {
        b.iter_batched(
            // The daemon hands the recorder the copy it made of each FUSE write: so does this.
            || (fresh(), data.clone()),
            |((d, s, mut rec), data)| {
                rec.create(&p("f"), NodeKind::File, META, "").unwrap();
                rec.write_owned(&p("f"), 0, data).unwrap();
                let c = rec.commit(false).unwrap().unwrap();
                // Returned, so that tearing the store down is not timed.
                (d, s, rec, c)
            },
            BatchSize::PerIteration,
        )
    });
    g.finish();
}

fn with_file(size: usize) -> (tempfile::TempDir, Arc<Store>, Recorder) {
    let (d, s, mut rec) = fresh();
    rec.create(&p("f"), NodeKind::File, META, "").unwrap();
    let data = random(size, size as u64);
    for (i, chunk) in data.chunks(8 << 20).enumerate() {
        rec.write(&p("f"), (i * (8 << 20)) as u64, chunk).unwrap();
    }
    rec.commit(true).unwrap();
    (d, s, rec)
}

fn append(c: &mut Criterion) {
    let mut g = c.benchmark_group("append_1KiB_commit");
    g.sample_size(30);
    for mib in [1usize, 10, 100] {
        let (_d, store, mut rec) = with_file(mib << 20);
        let mut size = (mib << 20) as u64;
        let mut stored = Vec::new();
        g.bench_with_input(
            BenchmarkId::from_parameter(format!("{mib}MiB")),
            &mib,
            |b, _| {
                b.iter(|| {
                    // New bytes each time: a repeated kilobyte would be deduplicated.
                    rec.write(&p("f"), size, &random(1024, size)).unwrap();
                    size += 1024;
                    stored.push(rec.commit(false).unwrap().unwrap().stored_bytes);
                })
            },
        );
        print_bytes(
            &format!("append 1 KiB to {mib} MiB (per commit)"),
            &mut stored,
        );
        drop(store);
    }
    g.finish();
}

fn in_place(c: &mut Criterion) {
    let (_d, _store, mut rec) = with_file(100 << 20);
    let mut g = c.benchmark_group("in_place_4KiB_in_100MiB");
    g.sample_size(30);
    let mut stored = Vec::new();
    let mut i = 0u64;
    g.bench_function("commit", |b| {
        b.iter(|| {
            i += 1;
            let off = (i * 7_919_993) % ((100 << 20) - 4096);
            rec.write(&p("f"), off, &random(4096, i)).unwrap();
            stored.push(rec.commit(false).unwrap().unwrap().stored_bytes);
        })
    });
    g.finish();
    print_bytes("4 KiB in-place write into 100 MiB", &mut stored);
}

fn text(n: usize, seed: u64) -> Vec<u8> {
    let words = [
        "agent", "memory", "tool", "session", "the", "a", "user", "said", "ok", "model",
    ];
    let mut r = rand::rngs::StdRng::seed_from_u64(seed);
    let mut out = Vec::with_capacity(n + 100);
    while out.len() < n {
        for _ in 0..12 {
            out.extend_from_slice(words[(r.next_u32() % 10) as usize].as_bytes());
            out.push(b' ');
        }
        out.extend_from_slice(format!("{}\n", r.next_u32()).as_bytes());
    }
    out.truncate(n);
    out
}

fn temp_rename(c: &mut Criterion) {
    let (_d, _store, mut rec) = fresh();
    let mut content = text(1 << 20, 3);
    rec.create(&p("MEMORY.md"), NodeKind::File, META, "")
        .unwrap();
    rec.write(&p("MEMORY.md"), 0, &content).unwrap();
    rec.commit(true).unwrap();
    let mut stored = Vec::new();
    let mut i = 0;
    let mut g = c.benchmark_group("temp_rename_1MiB_one_line_inserted");
    g.sample_size(20);
    g.bench_function("commit", |b| {
        b.iter(|| {
            i += 1;
            let line = format!("- inserted note number {i}\n");
            let at = 200 + (i * 37) % 2000;
            let at = at + content[at..].iter().position(|&c| c == b'\n').unwrap() + 1;
            content.splice(at..at, line.bytes());
            rec.create(&p("MEMORY.md.tmp"), NodeKind::File, META, "")
                .unwrap();
            rec.write(&p("MEMORY.md.tmp"), 0, &content).unwrap();
            rec.rename(&p("MEMORY.md.tmp"), &p("MEMORY.md"), RenameMode::Replace)
                .unwrap();
            stored.push(rec.commit(false).unwrap().unwrap().stored_bytes);
        })
    });
    g.finish();
    print_bytes(
        "1 MiB text rewritten via temp+rename, one line inserted",
        &mut stored,
    );
}

fn reads(c: &mut Criterion) {
    let (_d, store, mut rec) = fresh();
    rec.create(&p("state.json"), NodeKind::File, META, "")
        .unwrap();
    rec.create(&p("big"), NodeKind::Dir, META, "").unwrap();
    let mut seqs = Vec::new();
    for i in 0..100_000u64 {
        let body = format!(
            "{{\"version\": {i}, \"pad\": \"{}\"}}\n",
            "x".repeat((i % 100) as usize)
        );
        rec.truncate(&p("state.json"), 0).unwrap();
        rec.write(&p("state.json"), 0, body.as_bytes()).unwrap();
        if i < 10_000 {
            rec.create(&p(&format!("big/entry-{i:05}")), NodeKind::File, META, "")
                .unwrap();
        }
        seqs.push(rec.commit(false).unwrap().unwrap().seq);
    }
    store.flush().unwrap();
    let mut g = c.benchmark_group("as_of_a_moment");
    g.sample_size(50);
    let mut k = 0usize;
    g.bench_function("read_file_among_100000_versions", |b| {
        b.iter(|| {
            k = (k + 7919) % seqs.len();
            let r = store.open_file(&p("state.json"), seqs[k]).unwrap();
            let mut buf = vec![0u8; r.len() as usize];
            r.read_at(0, &mut buf).unwrap();
            buf
        })
    });
    g.sample_size(10);
    g.bench_function("list_10000_entry_directory", |b| {
        b.iter(|| {
            k = (k + 7919) % seqs.len();
            let s = Seq(seqs[k].0.max(seqs[9_999].0));
            let l = store.list(&p("big"), s).unwrap();
            assert_eq!(l.len(), 10_000);
            l
        })
    });
    g.finish();
}

/// Rollback of a 10,000-file real tree where 100 files changed: plan + apply touch only those.
fn rollback(c: &mut Criterion) {
    use clawfs::daemon::recorder_thread::Recording;
    use clawfs::fs::filter::Filter;
    use clawfs::realfs::RealTree;
    use clawfs::store::rollback::apply_rollback;
    let (_d, store, rec) = fresh();
    let tree = tempfile::tempdir().unwrap();
    for i in 0..10_000 {
        let dir = tree.path().join(format!("d{:02}", i % 100));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(
            dir.join(format!("f{i:05}.md")),
            format!("file {i}\n").repeat(20),
        )
        .unwrap();
    }
    let root = Arc::new(clawfs::sys::open_dir(tree.path()).unwrap());
    let r = std::cell::RefCell::new(Recording::new(rec, root, Filter::new(&[]).unwrap()));
    r.borrow_mut().import_real(&RelPath::root());
    r.borrow_mut().commit(true);
    let base = store.head();
    let real = RealTree::new(tree.path());
    let mut g = c.benchmark_group("rollback_10000_files_100_changed");
    g.sample_size(10);
    let mut round = 0;
    g.bench_function("plan_and_apply", |b| {
        b.iter_batched(
            || {
                round += 1;
                let mut r = r.borrow_mut();
                for i in (0..10_000).step_by(100) {
                    let path = format!("d{:02}/f{i:05}.md", i % 100);
                    let body = format!("changed {round}\n");
                    std::fs::write(tree.path().join(&path), &body).unwrap();
                    r.rec.truncate(&p(&path), 0).unwrap();
                    r.rec.write(&p(&path), 0, body.as_bytes()).unwrap();
                }
                r.commit(false);
            },
            |()| {
                let plan = store.plan_rollback(base, &[], false).unwrap();
                assert_eq!(plan.actions.len(), 100);
                apply_rollback(&mut r.borrow_mut().rec, &plan, &real).unwrap()
            },
            BatchSize::PerIteration,
        )
    });
    g.finish();
}

criterion_group!(
    benches,
    ingest,
    append,
    in_place,
    temp_rename,
    reads,
    rollback
);
criterion_main!(benches);
