//! Property test: any sequence of operations, applied to the store and to a reference model,
//! reads back equal at every committed epoch — also after the store is closed and reopened.

use std::collections::BTreeMap;
use std::sync::Arc;

use clawfs::ids::{Seq, SessionId};
use clawfs::relpath::RelPath;
use clawfs::store::catalog::{Meta, NodeKind};
use clawfs::store::recorder::{Recorder, RenameMode};
use clawfs::store::Store;
use proptest::prelude::*;

const PATHS: &[&str] = &[
    "a", "b", "x", "x/a", "x/b", "y", "y/a", "y/x", "y/x/a", "x/y",
];

#[derive(Clone, Debug)]
enum Op {
    Mkdir(usize),
    Create(usize),
    Write(usize, u32, u32, u8),
    Truncate(usize, u32),
    Rename(usize, usize),
    Link(usize, usize),
    Unlink(usize),
    Rmdir(usize),
    Symlink(usize, u8),
    Commit,
}

fn op() -> impl Strategy<Value = Op> {
    let p = 0..PATHS.len();
    // Files and their contents are what most operations touch, so they weigh most; the first
    // four paths get most of them so that operations meet the same files often.
    let hot = 0..4usize;
    prop_oneof![
        2 => p.clone().prop_map(Op::Mkdir),
        3 => p.clone().prop_map(Op::Create),
        2 => hot.clone().prop_map(Op::Create),
        4 => (hot.clone(), 0u32..150_000, 1u32..100_000, any::<u8>()).prop_map(|(a, b, c, d)| Op::Write(a, b, c, d)),
        2 => (p.clone(), 0u32..150_000, 1u32..40_000, any::<u8>()).prop_map(|(a, b, c, d)| Op::Write(a, b, c, d)),
        3 => (hot, 0u32..200_000).prop_map(|(a, b)| Op::Truncate(a, b)),
        2 => (p.clone(), p.clone()).prop_map(|(a, b)| Op::Rename(a, b)),
        2 => (p.clone(), p.clone()).prop_map(|(a, b)| Op::Link(a, b)),
        2 => p.clone().prop_map(Op::Unlink),
        2 => p.clone().prop_map(Op::Rmdir),
        2 => (p, any::<u8>()).prop_map(|(a, b)| Op::Symlink(a, b)),
        2 => Just(Op::Commit),
    ]
}

#[derive(Clone, Debug, PartialEq)]
enum Obj {
    Dir,
    File(usize),
    Link(String),
}

/// The reference: paths to objects; files are shared through an index (hard links).
#[derive(Clone, Debug, Default)]
struct Model {
    paths: BTreeMap<String, Obj>,
    files: Vec<Vec<u8>>,
}

#[derive(Clone, Debug, PartialEq)]
enum Seen {
    Dir,
    File(Vec<u8>),
    Link(String),
}

impl Model {
    fn parent_ok(&self, p: &str) -> bool {
        match p.rfind('/') {
            None => true,
            Some(i) => self.paths.get(&p[..i]) == Some(&Obj::Dir),
        }
    }
    fn children(&self, p: &str) -> Vec<String> {
        let pre = format!("{p}/");
        self.paths
            .keys()
            .filter(|k| k.starts_with(&pre))
            .cloned()
            .collect()
    }
    fn snapshot(&self) -> BTreeMap<String, Seen> {
        self.paths
            .iter()
            .map(|(k, v)| {
                (
                    k.clone(),
                    match v {
                        Obj::Dir => Seen::Dir,
                        Obj::File(i) => Seen::File(self.files[*i].clone()),
                        Obj::Link(t) => Seen::Link(t.clone()),
                    },
                )
            })
            .collect()
    }

    /// Applies `op` to the model and the recorder when the model says it is valid.
    fn apply(&mut self, op: &Op, rec: &mut Recorder) -> bool {
        let rp = |i: usize| RelPath::new(PATHS[i]).unwrap();
        let meta = Meta {
            mode: 0o644,
            ..Default::default()
        };
        match *op {
            Op::Mkdir(i) | Op::Create(i) | Op::Symlink(i, _) => {
                let p = PATHS[i];
                if self.paths.contains_key(p) || !self.parent_ok(p) {
                    return false;
                }
                let (obj, kind, target) = match op {
                    Op::Mkdir(_) => (Obj::Dir, NodeKind::Dir, String::new()),
                    Op::Create(_) => {
                        self.files.push(Vec::new());
                        (
                            Obj::File(self.files.len() - 1),
                            NodeKind::File,
                            String::new(),
                        )
                    }
                    Op::Symlink(_, t) => {
                        let t = format!("target-{t}");
                        (Obj::Link(t.clone()), NodeKind::Symlink, t)
                    }
                    _ => unreachable!(),
                };
                self.paths.insert(p.to_string(), obj);
                rec.create(&rp(i), kind, meta, &target).unwrap();
            }
            Op::Write(i, off, len, fill) => {
                let Some(Obj::File(f)) = self.paths.get(PATHS[i]) else {
                    return false;
                };
                let data: Vec<u8> = (0..len)
                    .map(|k| fill.wrapping_add((k % 251) as u8))
                    .collect();
                let file = &mut self.files[*f];
                let end = (off + len) as usize;
                if file.len() < end {
                    file.resize(end, 0);
                }
                file[off as usize..end].copy_from_slice(&data);
                // Both ways in: borrowed (copied) and owned (kept as the pending buffer).
                if fill % 2 == 0 {
                    rec.write(&rp(i), off as u64, &data).unwrap();
                } else {
                    rec.write_owned(&rp(i), off as u64, data).unwrap();
                }
            }
            Op::Truncate(i, size) => {
                let Some(Obj::File(f)) = self.paths.get(PATHS[i]) else {
                    return false;
                };
                self.files[*f].resize(size as usize, 0);
                rec.truncate(&rp(i), size as u64).unwrap();
            }
            Op::Unlink(i) => {
                match self.paths.get(PATHS[i]) {
                    Some(Obj::File(_)) | Some(Obj::Link(_)) => {}
                    _ => return false,
                }
                self.paths.remove(PATHS[i]);
                rec.unlink(&rp(i)).unwrap();
            }
            Op::Rmdir(i) => {
                if self.paths.get(PATHS[i]) != Some(&Obj::Dir)
                    || !self.children(PATHS[i]).is_empty()
                {
                    return false;
                }
                self.paths.remove(PATHS[i]);
                rec.rmdir(&rp(i)).unwrap();
            }
            Op::Link(i, j) => {
                let (from, to) = (PATHS[i], PATHS[j]);
                let Some(obj @ Obj::File(_)) = self.paths.get(from).cloned() else {
                    return false;
                };
                if self.paths.contains_key(to) || !self.parent_ok(to) {
                    return false;
                }
                self.paths.insert(to.to_string(), obj);
                rec.link(&rp(i), &rp(j)).unwrap();
            }
            Op::Rename(i, j) => {
                let (from, to) = (PATHS[i], PATHS[j]);
                let Some(obj) = self.paths.get(from).cloned() else {
                    return false;
                };
                if from == to || !self.parent_ok(to) {
                    return false;
                }
                if obj == Obj::Dir && (to.starts_with(&format!("{from}/"))) {
                    return false;
                }
                if let Some(existing) = self.paths.get(to) {
                    match (&obj, existing) {
                        (Obj::Dir, Obj::Dir) if self.children(to).is_empty() => {}
                        (Obj::Dir, _) | (_, Obj::Dir) => return false,
                        (a, b) if a == b => return false, // same file: POSIX says do nothing
                        _ => {}
                    }
                }
                let moved: Vec<(String, Obj)> = self
                    .children(from)
                    .into_iter()
                    .map(|k| {
                        let v = self.paths.remove(&k).unwrap();
                        (format!("{to}{}", &k[from.len()..]), v)
                    })
                    .collect();
                self.paths.remove(from);
                self.paths.insert(to.to_string(), obj);
                self.paths.extend(moved);
                rec.rename(&rp(i), &rp(j), RenameMode::Replace).unwrap();
            }
            Op::Commit => return false,
        }
        true
    }
}

fn read_tree(store: &Store, seq: Seq) -> BTreeMap<String, Seen> {
    store
        .walk(&RelPath::root(), seq)
        .unwrap()
        .into_iter()
        .filter(|(p, _)| !p.is_root())
        .map(|(p, e)| {
            let seen = match e.version.kind {
                NodeKind::Dir => Seen::Dir,
                NodeKind::Symlink => Seen::Link(e.version.target.clone()),
                NodeKind::File => Seen::File(store.read_file(&p, seq).unwrap()),
            };
            (p.as_str().to_string(), seen)
        })
        .collect()
}

fn check_all(store: &Store, snaps: &[(Seq, BTreeMap<String, Seen>)]) -> Result<(), TestCaseError> {
    for (seq, want) in snaps {
        let got = read_tree(store, *seq);
        prop_assert_eq!(&got, want, "at epoch {}", seq);
    }
    Ok(())
}

/// Opens the store again. sled's I/O threads can hold its lock file for a moment after the last
/// handle is dropped, so "busy" right after a close is waited out (the daemon does the same).
fn reopen(dir: &std::path::Path) -> Arc<Store> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        match Store::open(dir) {
            Err(clawfs::store::StoreError::Busy(_)) if std::time::Instant::now() < deadline => {
                std::thread::sleep(std::time::Duration::from_millis(10))
            }
            r => return r.unwrap(),
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]
    #[test]
    fn every_epoch_reads_back_as_the_model(ops in proptest::collection::vec(op(), 1..60)) {
        let dir = tempfile::tempdir().unwrap();
        let mut snaps = Vec::new();
        {
            let store: Arc<Store> = Store::open_or_create(dir.path()).unwrap();
            let mut rec = store.recorder(SessionId(1)).unwrap();
            let mut model = Model::default();
            for op in &ops {
                if let Op::Commit = op {
                    if let Some(c) = rec.commit(false).unwrap() {
                        snaps.push((c.seq, model.snapshot()));
                    }
                } else {
                    model.apply(op, &mut rec);
                }
            }
            if let Some(c) = rec.commit(true).unwrap() {
                snaps.push((c.seq, model.snapshot()));
            }
            check_all(&store, &snaps)?;
        }
        let store = reopen(dir.path());
        check_all(&store, &snaps)?;
    }
}
