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
//!
//! A [`Subset`] reads only a slice of the packs (restic's `--read-data-subset`), so a large
//! repository can be read whole over a week of daily checks; the logs and indexes are read
//! every time.

use std::collections::{HashMap, HashSet};
use std::path::Path;

use serde::Serialize;
use sha2::Digest;

use crate::ids::{ChunkId, Seq};
use crate::remote::Traffic;
use crate::replicate::layout::{self, IndexEntry};
use crate::replicate::repo::Repo;
use crate::replicate::restore::{clone_catalog, in_parallel, Wanted};
use crate::replicate::Result;
use crate::store::content::decode_leaf;
use crate::store::pack::decode_record;
use crate::store::Store;

/// Packs read at once (each held in memory while it is checked, ~8 MiB).
const CHECKERS: usize = 4;

/// The slice `n` of `t` of a repository's packs: a pack belongs to one slice, by a hash of its
/// name, so the slices 1/t … t/t together read every pack exactly once.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Subset {
    n: u64,
    t: u64,
}

impl Subset {
    /// Whether `pack` is in this slice.
    pub fn holds(&self, pack: &str) -> bool {
        let h = sha2::Sha256::digest(pack.as_bytes());
        let first = u64::from_be_bytes(h[..8].try_into().expect("8 bytes"));
        first % self.t == self.n - 1
    }
}

impl std::str::FromStr for Subset {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, String> {
        let bad = || format!("{s:?} is not a subset: give N/T with 1 <= N <= T, such as 1/7");
        let (n, t) = s.split_once('/').ok_or_else(bad)?;
        let (n, t): (u64, u64) = (
            n.trim().parse().map_err(|_| bad())?,
            t.trim().parse().map_err(|_| bad())?,
        );
        if n == 0 || n > t {
            return Err(bad());
        }
        Ok(Subset { n, t })
    }
}

impl std::fmt::Display for Subset {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.n, self.t)
    }
}

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
    /// The slice of the packs read (`N/T`), or none when all were.
    pub subset: Option<String>,
    /// Packs the logs name that this slice left unread: their indexes vouch for their chunks.
    pub packs_unread: u64,
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

/// Reads and checks everything on `repo` (of the packs, only `subset`'s slice when given),
/// with scratch catalogues under `scratch`. Damage is reported in the result; an error means
/// the check itself could not go on (the remote cannot be listed, the scratch directory cannot
/// be written).
pub fn check(
    repo: &Repo,
    scratch: &Path,
    subset: Option<Subset>,
    progress: &mut dyn FnMut(&str, u64, u64),
) -> Result<CheckReport> {
    let mut report = CheckReport {
        remote: repo.remote().describe(),
        subset: subset.map(|s| s.to_string()),
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
                store.each_content(|content| {
                    wanted.add(content);
                    Ok(())
                })?;
            }
            Err(e) => report
                .problems
                .push(format!("the log of device {device}: {e}")),
        }
        report.devices.push(log);
    }
    let mut held: HashSet<ChunkId> = HashSet::new();
    let (packs, unread): (Vec<(String, Vec<IndexEntry>)>, Vec<_>) = packs
        .into_iter()
        .partition(|(pack, _)| subset.is_none_or(|s| s.holds(pack)));
    report.packs_unread = unread.len() as u64;
    held.extend(unread.iter().flat_map(|(_, es)| es.iter().map(|e| e.id)));
    let total = packs.len() as u64;
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
    use crate::replicate::push;
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
        run_subset(remote, d, None)
    }

    fn run_subset(remote: &Arc<MemRemote>, d: &Path, subset: Option<&str>) -> CheckReport {
        let (repo, _) = Repo::open(remote.clone(), "pw", false).unwrap();
        let scratch = tempfile::tempdir_in(d).unwrap();
        let subset = subset.map(|s| s.parse().unwrap());
        check(&repo, scratch.path(), subset, &mut |_, _, _| {}).unwrap()
    }

    /// The slices 1/t … t/t read every pack exactly once between them, and a damaged pack is
    /// found by the one slice that reads it; a subset that is not N/T is refused.
    #[test]
    fn subsets_read_every_pack_once_between_them() {
        let d = tempfile::tempdir().unwrap();
        let remote = pushed(d.path());
        let packs = remote.list("packs/").unwrap();
        assert!(packs.len() >= 2, "{packs:?}");
        let t = 3;
        let slices: Vec<CheckReport> = (1..=t)
            .map(|n| run_subset(&remote, d.path(), Some(&format!("{n}/{t}"))))
            .collect();
        for r in &slices {
            assert!(r.problems.is_empty(), "{:?}", r.problems);
            assert_eq!((r.packs + r.packs_unread) as usize, packs.len());
        }
        assert_eq!(
            slices.iter().map(|r| r.packs).sum::<u64>() as usize,
            packs.len()
        );

        let name = &packs[0];
        let good = remote.get(name).unwrap();
        let mut bad = good.clone();
        bad[good.len() / 2] ^= 1;
        remote.put(name, &bad).unwrap();
        let found: Vec<bool> = (1..=t)
            .map(|n| {
                let r = run_subset(&remote, d.path(), Some(&format!("{n}/{t}")));
                r.problems.iter().any(|p| p.contains(name.as_str()))
            })
            .collect();
        assert_eq!(found.iter().filter(|f| **f).count(), 1, "{found:?}");

        for bad in ["0/3", "4/3", "1", "a/b", "1/0", ""] {
            let e = bad.parse::<Subset>().unwrap_err();
            assert!(e.contains("N/T"), "{bad}: {e}");
        }
        assert_eq!("2/7".parse::<Subset>().unwrap().to_string(), "2/7");
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
