//! `clawfs verify --remote`: a repository read whole and checked, as `restic check --read-data`
//! does.
//!
//! A restore fetches only the packs its moment needs, so damage elsewhere in a repository
//! stays unseen until an older moment is asked for. This reads everything: every device's log
//! (authenticated, every record checked and applied to a scratch catalogue, as a clone does),
//! every index, every pack, and every chunk record in it (CRC, decompressed, hashed against its
//! id). Then it checks that every chunk the logs' versions use, chunk lists included, is held
//! by some pack. Objects that no log names (left by a push or a thinning cut short, or a push
//! still under way) are listed but are not damage. It never writes to the remote.

use std::collections::{HashMap, HashSet};
use std::path::Path;

use serde::Serialize;

use crate::ids::{ChunkId, Seq};
use crate::remote::Traffic;
use crate::replicate::layout::{self, IndexEntry};
use crate::replicate::push;
use crate::replicate::repo::Repo;
use crate::replicate::restore::{clone_catalog, in_parallel, Wanted};
use crate::replicate::Result;
use crate::store::catalog::{decode, NodeVersion};
use crate::store::content::decode_leaf;
use crate::store::pack::decode_record;
use crate::store::{schema, Store};

/// Packs read at once (each held in memory while it is checked, ~8 MiB).
const CHECKERS: usize = 4;

/// One device's log, as read.
#[derive(Clone, Debug, Serialize)]
pub struct DeviceLog {
    /// The device id.
    pub device: String,
    /// The newest epoch of its log (0 if the log could not be read).
    pub head: Seq,
    /// Log segments read.
    pub segments: u64,
}

/// What a check found.
#[derive(Clone, Debug, Default, Serialize)]
pub struct CheckReport {
    /// The remote, described.
    pub remote: String,
    /// Every device's log.
    pub devices: Vec<DeviceLog>,
    /// Index objects read.
    pub indexes: u64,
    /// Pack objects read (a missing or unreadable one is a problem, not counted here).
    pub packs: u64,
    /// Their size, sealed.
    pub pack_bytes: u64,
    /// Chunk records checked.
    pub chunks: u64,
    /// Objects no log names: not damage.
    pub unreferenced: Vec<String>,
    /// Damage, one line per object or chunk; empty when the repository is whole.
    pub problems: Vec<String>,
    /// Requests and bytes.
    pub traffic: Traffic,
}

/// What one pack held.
#[derive(Default)]
struct PackCheck {
    read: bool,
    held: Vec<ChunkId>,
    listed: Vec<ChunkId>,
    bytes: u64,
    problems: Vec<String>,
}

/// Reads and checks everything on `repo`, with scratch catalogues under `scratch`. Damage is
/// reported in the result; an error means the check itself could not go on (the remote
/// cannot be listed, the scratch directory cannot be written).
pub fn check(
    repo: &Repo,
    scratch: &Path,
    progress: &mut dyn FnMut(&str, u64, u64),
) -> Result<CheckReport> {
    let mut report = CheckReport {
        remote: repo.remote().describe(),
        ..Default::default()
    };
    let mut named: HashSet<String> = HashSet::from([layout::CONFIG.to_string()]);
    let mut packs: HashMap<String, Vec<IndexEntry>> = HashMap::new();
    let mut wanted = Wanted::default();
    for (i, device) in repo.devices()?.into_iter().enumerate() {
        named.insert(layout::marks_name(&device));
        let store = Store::open_or_create(&scratch.join(format!("device-{i}")))?;
        let mut log = DeviceLog {
            device: device.clone(),
            head: Seq::ZERO,
            segments: 0,
        };
        match clone_catalog(&store, repo, &device, progress) {
            Ok(cloning) => {
                log.head = cloning.report.head;
                log.segments = cloning.report.segments;
                report.indexes += (cloning.objects.len() as u64).saturating_sub(log.segments);
                named.extend(cloning.objects.iter().cloned());
                for (pack, entries) in cloning.packs() {
                    named.insert(pack.clone());
                    packs
                        .entry(pack.clone())
                        .or_default()
                        .extend(entries.iter().cloned());
                }
                for epoch in store.epochs_from(Seq(1), store.head()) {
                    for (k, v) in push::journaled(&store, epoch?.0)?.records {
                        if k.first() == Some(&schema::NODE) {
                            let nv: NodeVersion = decode(&v, || "node version".into())?;
                            wanted.add(&nv.content);
                        }
                    }
                }
            }
            Err(e) => report
                .problems
                .push(format!("the log of device {device}: {e}")),
        }
        report.devices.push(log);
    }
    let packs: Vec<(String, Vec<IndexEntry>)> = packs.into_iter().collect();
    let total = packs.len() as u64;
    let mut held: HashSet<ChunkId> = HashSet::new();
    let mut listed: Vec<ChunkId> = Vec::new();
    in_parallel(
        CHECKERS,
        &packs,
        |(pack, entries)| Ok(check_pack(repo, pack, entries, &wanted.leaves)),
        |done, c| {
            report.packs += c.read as u64;
            report.pack_bytes += c.bytes;
            report.chunks += c.held.len() as u64;
            held.extend(c.held);
            listed.extend(c.listed);
            report.problems.extend(c.problems);
            progress("packs", done, total);
        },
    )?;
    let mut missing: Vec<&ChunkId> = wanted
        .leaves
        .iter()
        .chain(&wanted.chunks)
        .chain(&listed)
        .filter(|id| !held.contains(id))
        .collect();
    missing.sort();
    missing.dedup();
    if let Some(first) = missing.first() {
        report.problems.push(format!(
            "{} chunks that versions use (chunk lists included) are held by no intact pack (the first: {first})",
            missing.len()
        ));
    }
    for prefix in ["log/", "index/", "packs/", "marks/"] {
        for name in repo.remote().list(prefix)? {
            if !named.contains(&name) {
                report.unreferenced.push(name);
            }
        }
    }
    report.unreferenced.sort();
    report.traffic = repo.traffic();
    Ok(report)
}

/// Reads one pack and checks every record its indexes list. The chunk lists among them
/// (`leaves`) are decoded, and the chunks they list returned.
fn check_pack(
    repo: &Repo,
    pack: &str,
    entries: &[IndexEntry],
    leaves: &HashSet<ChunkId>,
) -> PackCheck {
    let mut c = PackCheck::default();
    let plain = match repo.get_sealed(pack) {
        Ok(p) => p,
        Err(e) => {
            let e = e.to_string();
            c.problems.push(if e.contains(pack) {
                e
            } else {
                format!("{pack}: {e}")
            });
            return c;
        }
    };
    c.read = true;
    c.bytes = plain.len() as u64;
    for e in entries {
        let Some(rec) = plain.get(e.offset as usize..e.offset as usize + e.len as usize) else {
            c.problems
                .push(format!("{pack}: its index points past its end"));
            continue;
        };
        let data = match decode_record(crate::ids::PackId(0), e.offset as u64, rec, &e.id) {
            Ok(d) => d,
            Err(err) => {
                c.problems.push(format!("{pack}: chunk {}: {err}", e.id));
                continue;
            }
        };
        if ChunkId::of(&data) != e.id {
            c.problems
                .push(format!("{pack}: chunk {} does not hash to its id", e.id));
            continue;
        }
        if leaves.contains(&e.id) {
            match decode_leaf(&data) {
                Ok(refs) => c.listed.extend(refs.iter().map(|r| r.id)),
                Err(err) => c
                    .problems
                    .push(format!("{pack}: chunk list {}: {err}", e.id)),
            }
        }
        c.held.push(e.id);
    }
    c
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::SessionId;
    use crate::relpath::RelPath;
    use crate::remote::{MemRemote, Remote};
    use crate::replicate::settings::RemoteEntry;
    use crate::store::catalog::{Meta, NodeKind};
    use std::sync::Arc;

    /// A store with a small file and a large one (chunk list and all), pushed twice.
    fn pushed(d: &Path) -> Arc<MemRemote> {
        std::env::set_var("CLAWFS_SCRYPT_LOG_N", "10");
        let store = Store::open_or_create(&d.join("a")).unwrap();
        let mut rec = store.recorder(SessionId(1)).unwrap();
        let p = |s: &str| RelPath::new(s).unwrap();
        let big: Vec<u8> = (0..3_000_000u32)
            .map(|i| (i.wrapping_mul(2654435761) >> 11) as u8)
            .collect();
        rec.create(&p("big"), NodeKind::File, Meta::default(), "")
            .unwrap();
        rec.write(&p("big"), 0, &big).unwrap();
        rec.commit(true).unwrap();
        let remote = Arc::new(MemRemote::default());
        let (repo, _) = Repo::open(remote.clone(), "pw", true).unwrap();
        let entry = RemoteEntry::in_memory();
        push::push(&store, &repo, &entry, &mut |_, _| {}).unwrap();
        rec.create(&p("a.md"), NodeKind::File, Meta::default(), "")
            .unwrap();
        rec.write(&p("a.md"), 0, b"alpha").unwrap();
        rec.commit(true).unwrap();
        push::push(&store, &repo, &entry, &mut |_, _| {}).unwrap();
        remote
    }

    fn run(remote: &Arc<MemRemote>, d: &Path) -> CheckReport {
        let (repo, _) = Repo::open(remote.clone(), "pw", false).unwrap();
        let scratch = tempfile::tempdir_in(d).unwrap();
        check(&repo, scratch.path(), &mut |_, _, _| {}).unwrap()
    }

    /// A whole repository checks clean; each kind of object, damaged, is one problem named by
    /// it, and the check goes on past it.
    #[test]
    fn every_damaged_object_is_named_and_a_whole_repository_is_clean() {
        let d = tempfile::tempdir().unwrap();
        let remote = pushed(d.path());
        let r = run(&remote, d.path());
        assert!(r.problems.is_empty(), "{:?}", r.problems);
        assert!(r.unreferenced.is_empty(), "{:?}", r.unreferenced);
        assert_eq!(r.devices.len(), 1);
        assert_eq!(r.devices[0].segments, 2);
        assert_eq!(r.indexes, 2);
        assert_eq!(r.packs as usize, remote.list("packs/").unwrap().len());
        assert!(r.chunks > 10, "{r:?}");

        for prefix in ["log/", "index/", "packs/", "marks/"] {
            for name in remote.list(prefix).unwrap() {
                let good = remote.get(&name).unwrap();
                let mut bad = good.clone();
                let at = bad.len() / 2;
                bad[at] ^= 0x10;
                remote.put(&name, &bad).unwrap();
                let r = run(&remote, d.path());
                remote.put(&name, &good).unwrap();
                assert!(
                    r.problems.iter().any(|p| p.contains("tampered")),
                    "{name}: {:?}",
                    r.problems
                );
                if prefix == "packs/" {
                    assert!(r.problems[0].contains(&name), "{:?}", r.problems);
                    // The other packs were still read.
                    assert_eq!(r.packs as usize + 1, remote.list("packs/").unwrap().len());
                }
            }
        }
        assert!(run(&remote, d.path()).problems.is_empty());
    }
}
