//! Thinning a remote: its log of this device rewritten to the store's history as a prune left
//! it, and the packs that only pruned moments used removed (`clawfs prune --remote NAME`).
//!
//! A remote is sent every moment and keeps them all; after a local prune, this makes it hold
//! what the store holds. Only this device's objects are touched: its log segments, the indexes
//! they name, and the packs those indexes name (a device never names another's packs).
//!
//! Order, so that the remote reads whole at every instant, and a run cut short anywhere is
//! finished or undone by the next one:
//! 1. a journal in the store names what the run will write (each copy pack before it is
//!    written) and what it will delete;
//! 2. the live chunks of packs that are mostly dead are uploaded again, in new packs, then one
//!    index locating every chunk the thinned log needs;
//! 3. the thinned log is written beside the old one, last segment first: until its first
//!    segment lands, the log reads as the old one; from then on, as the new one
//!    ([`layout::chain`]);
//! 4. the old segments, their indexes, and the packs no longer named are deleted, then the
//!    journal.
//!
//! A journal found at the start of a run is settled first: if the new log is the one read,
//! its deletions are done; otherwise what it wrote is deleted. Nothing the log read at that
//! time names is ever deleted.

use std::collections::{HashMap, HashSet};

use serde::{Deserialize, Serialize};

use crate::ids::{ChunkId, Seq};
use crate::remote::{RemoteError, Traffic};
use crate::replicate::layout::{self, Index, IndexEntry, LogSegment};
use crate::replicate::push::{self, PushReport};
use crate::replicate::repo::Repo;
use crate::replicate::settings::RemoteEntry;
use crate::replicate::{ReplicaError, Result};
use crate::store::catalog::now_ns;
use crate::store::replica::EpochRecords;
use crate::store::Store;

/// Records per segment of a thinned log, at least (the last one may be smaller).
const SEGMENT_BYTES: usize = 16 << 20;
/// A pack stays if at least this share of its bytes is live; the live records of the others
/// are uploaded again and the packs deleted (the local store's rule too).
const KEEP_LIVE: (u64, u64) = (3, 4);

/// What thinning a remote did (or, dry, would do).
#[derive(Clone, Debug, Default, Serialize)]
pub struct ThinReport {
    /// The remote.
    pub remote: String,
    /// The push that brought the remote up to date first.
    pub push: Option<PushReport>,
    /// The newest epoch the remote holds.
    pub head: Seq,
    /// Moments in the remote's log before, and after.
    pub moments_before: u64,
    /// See `moments_before`.
    pub moments_after: u64,
    /// Segments in the log before (with any left over from a run cut short), and after.
    pub segments_before: u64,
    /// See `segments_before`.
    pub segments_after: u64,
    /// Packs the log named before.
    pub packs_before: u64,
    /// Packs deleted.
    pub packs_removed: u64,
    /// Their bytes (before sealing).
    pub pack_bytes_removed: u64,
    /// Live chunks of those packs uploaded again, and their bytes.
    pub chunks_copied: u64,
    /// See `chunks_copied`.
    pub bytes_copied: u64,
    /// Objects deleted (segments, indexes and packs), including what a run cut short left.
    pub objects_deleted: u64,
    /// Requests and bytes.
    pub traffic: Traffic,
}

/// What a run will write and delete, kept in the store until it is done.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
struct Journal {
    /// The index the new log's first segment names: its being read means the switch happened.
    new_index: String,
    /// The new log's first segment has been written.
    switched: bool,
    /// What the run wrote: deleted if the switch did not happen.
    written: Vec<String>,
    /// What goes once the switch has happened.
    delete: Vec<String>,
}

fn journal_key(remote: &str) -> Vec<u8> {
    format!("\0thin:{remote}").into_bytes()
}

fn load_journal(store: &Store, remote: &str) -> Result<Option<Journal>> {
    let t = store.side_tree(push::STATE_TREE)?;
    Ok(match t.get(journal_key(remote))? {
        Some(v) => Some(serde_json::from_slice(&v).map_err(|e| {
            ReplicaError::Io(format!(
                "the thinning journal of {remote} is unreadable: {e}"
            ))
        })?),
        None => None,
    })
}

fn save_journal(store: &Store, remote: &str, j: &Journal) -> Result<()> {
    let t = store.side_tree(push::STATE_TREE)?;
    t.insert(journal_key(remote), serde_json::to_vec(j).expect("encodes"))?;
    t.flush()?;
    Ok(())
}

fn drop_journal(store: &Store, remote: &str) -> Result<()> {
    let t = store.side_tree(push::STATE_TREE)?;
    t.remove(journal_key(remote))?;
    t.flush()?;
    Ok(())
}

/// A device's log as the remote holds it.
struct Log {
    /// The segments read, in order: (from, to, name, indexes named, epochs held).
    chain: Vec<(Seq, Seq, String, Vec<String>, u64)>,
    /// Segments off the log (a run cut short left them).
    strays: Vec<String>,
    /// The indexes the log names, in order, and what they hold.
    indexes: Vec<(String, Index)>,
}

impl Log {
    fn read(repo: &Repo, device: &str) -> Result<Log> {
        let all = repo.all_segments(device)?;
        let chain = layout::chain(all.clone());
        let on: HashSet<&String> = chain.iter().map(|s| &s.2).collect();
        let strays = all
            .iter()
            .filter(|s| !on.contains(&s.2))
            .map(|s| s.2.clone())
            .collect();
        layout::check_chain(device, &chain)?;
        let mut segs = Vec::with_capacity(chain.len());
        let mut names: Vec<String> = Vec::new();
        for (from, to, name) in &chain {
            let seg = repo.segment(name)?;
            for ix in &seg.indexes {
                if !names.contains(ix) {
                    names.push(ix.clone());
                }
            }
            segs.push((
                *from,
                *to,
                name.clone(),
                seg.indexes,
                seg.epochs.len() as u64,
            ));
        }
        let mut indexes = Vec::with_capacity(names.len());
        for ix in names {
            let index = repo.index(&ix)?;
            indexes.push((ix, index));
        }
        Ok(Log {
            chain: segs,
            strays,
            indexes,
        })
    }

    /// Every object the log names: its segments, their indexes, and the indexes' packs.
    fn named(&self) -> HashSet<String> {
        let mut out: HashSet<String> = self.chain.iter().map(|s| s.2.clone()).collect();
        for (ix, index) in &self.indexes {
            out.insert(ix.clone());
            out.extend(index.packs.iter().map(|(p, _)| p.clone()));
        }
        out
    }

    fn head(&self) -> Seq {
        self.chain.last().map(|s| s.1).unwrap_or(Seq::ZERO)
    }
}

/// What a run will do.
struct Plan {
    log: Log,
    /// Packs that stay, with the records of theirs the thinned log uses.
    kept: Vec<(String, Vec<IndexEntry>)>,
    /// Packs that go, and their bytes.
    dropped: Vec<(String, u64)>,
    /// Chunks to upload again (from packs that go, or that no index had).
    copy: Vec<ChunkId>,
    /// Every chunk the thinned log uses.
    live: HashSet<ChunkId>,
    /// The new log's segments.
    bounds: Vec<(Seq, Seq)>,
    moments_after: u64,
}

/// Epoch `s` of the store as `entry`'s remote gets it.
fn shipped(store: &Store, entry: &RemoteEntry, s: Seq) -> Result<EpochRecords> {
    let mut e = [push::journaled(store, s)?];
    if !entry.include_secrets {
        push::strip_secrets(&mut e)?;
    }
    let [e] = e;
    Ok(e)
}

fn plan(store: &Store, entry: &RemoteEntry, log: Log, segment_bytes: usize) -> Result<Plan> {
    let head = log.head();
    // The thinned log: what it uses, and where its segments may end.
    let mut live: HashSet<ChunkId> = HashSet::new();
    let mut sizes: Vec<(Seq, usize)> = Vec::new();
    for epoch in store.epochs_from(Seq(1), head) {
        let s = epoch?.0;
        let e = [shipped(store, entry, s)?];
        push::needed_chunks(store, &e, &|_| Ok(false), &mut live)?;
        let bytes = e[0].records.iter().map(|(k, v)| k.len() + v.len()).sum();
        sizes.push((s, bytes));
    }
    if sizes.last().map(|s| s.0) != Some(head) {
        return Err(ReplicaError::Usage(format!(
            "the remote's log reaches epoch {head}, which this store does not hold; nothing was thinned"
        )));
    }
    let all: Vec<(Seq, Seq)> = log.chain.iter().map(|s| (s.0, s.1)).collect();
    let bounds = bounds(&sizes, &all, &log.strays, segment_bytes);
    // Where each live chunk is now, first place first.
    let mut at: HashMap<ChunkId, usize> = HashMap::new();
    let mut packs: Vec<(&String, &Vec<IndexEntry>)> = Vec::new();
    for (_, index) in &log.indexes {
        for (p, es) in &index.packs {
            if packs.iter().any(|(q, _)| *q == p) {
                continue;
            }
            for e in es {
                if live.contains(&e.id) {
                    at.entry(e.id).or_insert(packs.len());
                }
            }
            packs.push((p, es));
        }
    }
    let mut kept = Vec::new();
    let mut dropped = Vec::new();
    let mut copy: Vec<ChunkId> = live
        .iter()
        .filter(|c| !at.contains_key(c))
        .copied()
        .collect();
    for (i, (p, es)) in packs.iter().enumerate() {
        let mine: Vec<IndexEntry> = es
            .iter()
            .filter(|e| at.get(&e.id) == Some(&i))
            .copied()
            .collect();
        let total = es
            .iter()
            .map(|e| e.offset as u64 + e.len as u64)
            .max()
            .unwrap_or(0);
        let used: u64 = mine.iter().map(|e| e.len as u64).sum();
        if !mine.is_empty() && used * KEEP_LIVE.1 >= total * KEEP_LIVE.0 {
            kept.push(((*p).clone(), mine));
        } else {
            copy.extend(mine.iter().map(|e| e.id));
            dropped.push(((*p).clone(), total));
        }
    }
    copy.sort();
    Ok(Plan {
        log,
        kept,
        dropped,
        copy,
        live,
        bounds,
        moments_after: sizes.len() as u64,
    })
}

/// Where the new log's segments end: after about `segment_bytes` of records each, never
/// where a segment already there would make the log run from one log into the other. The
/// first segment reaches further than any that starts at epoch 1 (or is the whole log, and
/// replaces one of the same name); no other starts where a segment already there starts.
fn bounds(
    sizes: &[(Seq, usize)],
    old: &[(Seq, Seq)],
    strays: &[String],
    segment_bytes: usize,
) -> Vec<(Seq, Seq)> {
    let mut starts: HashSet<Seq> = old.iter().map(|s| s.0).collect();
    let mut first_reach = old.iter().filter(|s| s.0 == Seq(1)).map(|s| s.1).max();
    for name in strays {
        if let Some((_, from, to)) = layout::parse_log_name(name) {
            starts.insert(from);
            if from == Seq(1) {
                first_reach = first_reach.max(Some(to));
            }
        }
    }
    let first_reach = first_reach.unwrap_or(Seq::ZERO);
    let mut out = Vec::new();
    let mut from = Seq(1);
    let mut bytes = 0usize;
    for (i, &(s, b)) in sizes.iter().enumerate() {
        bytes += b;
        let last = i + 1 == sizes.len();
        let may_end = bytes >= segment_bytes
            && !starts.contains(&s.next())
            && (from != Seq(1) || s > first_reach);
        if last || may_end {
            out.push((from, s));
            from = s.next();
            bytes = 0;
        }
    }
    out
}

/// Deletes `names` but those in `keep`; a name already gone counts as deleted.
fn delete_all(repo: &Repo, names: &[String], keep: &HashSet<String>) -> Result<u64> {
    let mut n = 0;
    for name in names.iter().filter(|n| !keep.contains(*n)) {
        match repo.remote().delete(name) {
            Ok(()) | Err(RemoteError::NotFound(_)) => n += 1,
            Err(e) => return Err(e.into()),
        }
    }
    Ok(n)
}

/// Settles the journal a run cut short left: finishes it if its log is the one read, undoes
/// it otherwise. Returns the objects deleted.
fn settle(store: &Store, repo: &Repo, remote: &str, device: &str) -> Result<u64> {
    let Some(j) = load_journal(store, remote)? else {
        return Ok(0);
    };
    let log = Log::read(repo, device)?;
    let switched = j.switched
        || log
            .chain
            .first()
            .is_some_and(|s| s.3.contains(&j.new_index));
    let named = log.named();
    let n = if switched {
        tracing::info!(remote, "finishing a thinning of the remote cut short");
        delete_all(repo, &j.delete, &named)?
    } else {
        tracing::info!(
            remote,
            "undoing a thinning of the remote cut short before its new log was read"
        );
        delete_all(repo, &j.written, &named)?
    };
    drop_journal(store, remote)?;
    Ok(n)
}

/// Brings the remote up to date, then rewrites its log of this device to the store's history
/// and deletes what no moment left uses. `dry_run` reports and changes nothing (it pushes
/// nothing either, and reports on the remote as it is).
pub fn thin(store: &Store, repo: &Repo, entry: &RemoteEntry, dry_run: bool) -> Result<ThinReport> {
    thin_in(store, repo, entry, dry_run, SEGMENT_BYTES)
}

/// [`thin`], with segments of about `segment_bytes` of records.
fn thin_in(
    store: &Store,
    repo: &Repo,
    entry: &RemoteEntry,
    dry_run: bool,
    segment_bytes: usize,
) -> Result<ThinReport> {
    let _one = store.prune_lock();
    let remote = entry.name.as_str();
    let before = repo.traffic();
    let device = push::device_id(store)?;
    let mut report = ThinReport {
        remote: remote.to_string(),
        ..Default::default()
    };
    if !dry_run {
        report.objects_deleted += settle(store, repo, remote, &device)?;
        report.push = Some(push::push(store, repo, entry, &mut |_, _| {})?);
    }
    let log = Log::read(repo, &device)?;
    let pushed = push::load_state(store, remote)?.pushed;
    if log.head() != pushed {
        return Err(ReplicaError::Usage(format!(
            "{remote} holds epochs up to {} but this store has pushed {pushed} to it: push first; nothing was thinned",
            log.head()
        )));
    }
    if log.head() == Seq::ZERO {
        report.traffic = repo.traffic().since(&before);
        return Ok(report);
    }
    let plan = plan(store, entry, log, segment_bytes)?;
    report.head = plan.log.head();
    report.moments_before = plan.log.chain.iter().map(|s| s.4).sum();
    report.moments_after = plan.moments_after;
    report.segments_before = (plan.log.chain.len() + plan.log.strays.len()) as u64;
    report.segments_after = plan.bounds.len() as u64;
    report.packs_before = (plan.kept.len() + plan.dropped.len()) as u64;
    report.packs_removed = plan.dropped.len() as u64;
    report.pack_bytes_removed = plan.dropped.iter().map(|d| d.1).sum();
    report.chunks_copied = plan.copy.len() as u64;
    if dry_run {
        report.traffic = repo.traffic().since(&before);
        return Ok(report);
    }
    let (copied, deleted) = apply(store, repo, entry, &device, &plan)?;
    report.bytes_copied = copied;
    report.objects_deleted += deleted;
    report.traffic = repo.traffic().since(&before);
    Ok(report)
}

/// Carries a plan out (see the module's order). Returns the bytes copied and objects deleted.
fn apply(
    store: &Store,
    repo: &Repo,
    entry: &RemoteEntry,
    device: &str,
    plan: &Plan,
) -> Result<(u64, u64)> {
    let remote = entry.name.as_str();
    let old = &plan.log;
    let mut j = Journal::default();
    save_journal(store, remote, &j)?;
    let copies = push::upload_packs(
        store,
        repo,
        &plan.copy,
        &mut |name| {
            j.written.push(name.to_string());
            save_journal(store, remote, &j)
        },
        &mut |_, _| {},
    )?;
    let copied: u64 = copies
        .packs
        .iter()
        .flat_map(|(_, es)| es.iter().map(|e| e.len as u64))
        .sum();
    let mut index = Index {
        packs: plan.kept.clone(),
    };
    index.packs.extend(copies.packs.iter().cloned());
    let (index_name, plain) = push::index_object(repo, &index);
    let segments: Vec<String> = plan
        .bounds
        .iter()
        .map(|(a, b)| layout::log_name(device, *a, *b))
        .collect();
    // What the new log names is never deleted, even where an old object has its name.
    let mut new_named: HashSet<String> = segments.iter().cloned().collect();
    new_named.insert(index_name.clone());
    new_named.extend(index.packs.iter().map(|(p, _)| p.clone()));
    let existing: HashSet<&String> = old
        .chain
        .iter()
        .map(|s| &s.2)
        .chain(old.strays.iter())
        .collect();
    j.new_index = index_name.clone();
    j.written.push(index_name.clone());
    j.written
        .extend(segments.iter().filter(|s| !existing.contains(s)).cloned());
    j.delete = old
        .chain
        .iter()
        .map(|s| s.2.clone())
        .chain(old.strays.iter().cloned())
        .chain(old.indexes.iter().map(|(ix, _)| ix.clone()))
        .chain(plan.dropped.iter().map(|(p, _)| p.clone()))
        .filter(|n| !new_named.contains(n))
        .collect();
    save_journal(store, remote, &j)?;
    // The remote holds only what the new log names once the switch happens: forget the rest
    // now (a chunk forgotten too early is only uploaded again).
    let have = push::chunk_tree(store, remote)?;
    let mut gone = sled::Batch::default();
    for kv in have.iter() {
        let (k, _) = kv?;
        let live = <[u8; 32]>::try_from(&k[..]).is_ok_and(|id| plan.live.contains(&ChunkId(id)));
        if !live {
            gone.remove(k);
        }
    }
    have.apply_batch(gone)?;
    have.flush()?;
    repo.put_sealed(&index_name, &plain)?;
    let next_node = store.next_node()?;
    for (i, ((from, to), name)) in plan.bounds.iter().zip(&segments).enumerate().rev() {
        let seg = LogSegment {
            repo_id: repo.id().to_string(),
            device: device.to_string(),
            from: *from,
            to: *to,
            pushed_ns: now_ns(),
            next_node,
            indexes: if i == 0 {
                vec![index_name.clone()]
            } else {
                Vec::new()
            },
            epochs: store
                .epochs_from(*from, *to)
                .map(|epoch| shipped(store, entry, epoch?.0))
                .collect::<Result<_>>()?,
        };
        repo.put_sealed(name, &layout::pack_struct(&seg))?;
    }
    j.switched = true;
    save_journal(store, remote, &j)?;
    push::note_chunks(store, remote, plan.copy.iter().copied())?;
    let deleted = delete_all(repo, &j.delete, &new_named)?;
    drop_journal(store, remote)?;
    Ok((copied, deleted))
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;
    use std::sync::atomic::{AtomicI64, Ordering};
    use std::sync::Arc;

    use super::*;
    use crate::ids::SessionId;
    use crate::relpath::RelPath;
    use crate::remote::{MemRemote, Remote};
    use crate::replicate::restore::{clone_into, pick_device};
    use crate::store::catalog::{Meta, NodeKind};
    use crate::store::prune::tests::{noise, random_history_with, tree, Tree};
    use crate::store::prune::Plan;

    fn entry() -> RemoteEntry {
        RemoteEntry::in_memory()
    }

    /// A memory remote that fails every write and delete once its budget is spent.
    #[derive(Default)]
    struct Flaky {
        inner: MemRemote,
        /// Writes and deletes still allowed; negative: no limit.
        budget: AtomicI64,
    }

    impl Flaky {
        fn spend(&self) -> crate::remote::Result<()> {
            if self.budget.load(Ordering::SeqCst) == 0 {
                return Err(RemoteError::Service {
                    what: "flaky".into(),
                    detail: "cut short".into(),
                });
            }
            let _ = self
                .budget
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |b| {
                    (b > 0).then(|| b - 1)
                });
            Ok(())
        }

        fn bytes(&self) -> usize {
            let names = self.inner.list("").unwrap();
            names.iter().map(|n| self.inner.get(n).unwrap().len()).sum()
        }
    }

    impl Remote for Flaky {
        fn put(&self, name: &str, data: &[u8]) -> crate::remote::Result<()> {
            self.spend()?;
            self.inner.put(name, data)
        }
        fn get(&self, name: &str) -> crate::remote::Result<Vec<u8>> {
            self.inner.get(name)
        }
        fn list(&self, prefix: &str) -> crate::remote::Result<Vec<String>> {
            self.inner.list(prefix)
        }
        fn delete(&self, name: &str) -> crate::remote::Result<()> {
            self.spend()?;
            self.inner.delete(name)
        }
        fn describe(&self) -> String {
            "flaky memory".into()
        }
    }

    /// A store with a random history pushed every few epochs (so the remote's log has several
    /// segments, each with its pack), then pruned to a random set of moments.
    fn pruned(dir: &std::path::Path, seed: u64) -> (Arc<Store>, Vec<Tree>, Arc<Flaky>, Repo) {
        std::env::set_var("CLAWFS_SCRYPT_LOG_N", "10");
        let remote = Arc::new(Flaky {
            budget: AtomicI64::new(-1),
            ..Default::default()
        });
        let (repo, _) = Repo::open(remote.clone(), "pw", true).unwrap();
        let (store, trees) = random_history_with(dir, seed, 40, &mut |store, seq| {
            if seq.0 % 7 == 0 {
                push::push(store, &repo, &entry(), &mut |_, _| {}).unwrap();
            }
        });
        push::push(&store, &repo, &entry(), &mut |_, _| {}).unwrap();
        let kept: BTreeSet<Seq> = (1..=store.head().0)
            .filter(|s| (s * 7 + seed) % 5 == 0)
            .map(Seq)
            .chain([store.head()])
            .collect();
        store
            .prune(&Plan::new(store.moments().unwrap(), kept))
            .unwrap();
        (store, trees, remote, repo)
    }

    /// Every object the remote holds is named by the log of the store's device.
    fn nothing_left_over(store: &Store, remote: &Flaky, repo: &Repo) {
        let named = Log::read(repo, &push::device_id(store).unwrap())
            .unwrap()
            .named();
        for n in remote.inner.list("").unwrap() {
            if n != layout::CONFIG && !n.starts_with("marks/") {
                assert!(named.contains(&n), "{n} is left over");
            }
        }
    }

    /// A clone of the remote reads every moment the store kept as the store does.
    fn clones_as_kept(dir: &std::path::Path, store: &Store, repo: &Repo, trees: &[Tree]) {
        let b_dir = tempfile::tempdir_in(dir).unwrap();
        let b = Store::open_or_create(b_dir.path()).unwrap();
        let dev = pick_device(repo, None, None).unwrap();
        clone_into(&b, repo, &dev, "mem", &mut |_, _, _| {}).unwrap();
        assert_eq!(b.head(), store.head());
        for (s, _) in store.moments().unwrap() {
            assert_eq!(tree(&b, s), trees[s.0 as usize], "moment {s}");
        }
    }

    /// Segments of a few epochs each.
    const SMALL: usize = 4 << 10;

    /// What the store believes the remote holds, the remote's log names: a later push never
    /// leaves out a chunk the remote lost.
    fn held_is_named(store: &Store, repo: &Repo) {
        let have = push::chunk_tree(store, "mem").unwrap();
        let log = Log::read(repo, &push::device_id(store).unwrap()).unwrap();
        let on_remote: HashSet<ChunkId> = log
            .indexes
            .iter()
            .flat_map(|(_, ix)| ix.packs.iter().flat_map(|(_, es)| es.iter().map(|e| e.id)))
            .collect();
        for kv in have.iter() {
            let id = ChunkId(kv.unwrap().0.as_ref().try_into().unwrap());
            assert!(
                on_remote.contains(&id),
                "the store believes the remote holds a chunk its log does not name"
            );
        }
    }

    /// Thinned into one segment or into several: the log reads the kept moments, the remote
    /// holds nothing else, the log goes on after it, and a thinning of a thinned log (one
    /// segment: the new one replaces it under its name) finds nothing to delete.
    #[test]
    fn a_thinned_remote_holds_the_kept_moments_and_nothing_else() {
        for seed in 0..4u64 {
            let size = if seed % 2 == 0 { SEGMENT_BYTES } else { SMALL };
            let dir = tempfile::tempdir().unwrap();
            let (store, mut trees, remote, repo) = pruned(&dir.path().join("a"), seed);
            let dry = thin_in(&store, &repo, &entry(), true, size).unwrap();
            let r = thin_in(&store, &repo, &entry(), false, size).unwrap();
            assert_eq!(r.moments_after, store.moment_count().unwrap(), "{r:?}");
            assert_eq!(r.moments_before, store.head().0, "{r:?}");
            assert_eq!(
                (dry.moments_after, dry.packs_removed, dry.chunks_copied),
                (r.moments_after, r.packs_removed, r.chunks_copied)
            );
            assert!(r.segments_before >= 6, "{r:?}");
            assert_eq!(r.segments_after == 1, size == SEGMENT_BYTES, "{r:?}");
            nothing_left_over(&store, &remote, &repo);
            held_is_named(&store, &repo);
            clones_as_kept(dir.path(), &store, &repo, &trees);
            let mut rec = store.recorder(SessionId(2)).unwrap();
            let path = RelPath::new("after").unwrap();
            rec.create(&path, NodeKind::File, Meta::default(), "")
                .unwrap();
            rec.write(&path, 0, b"more").unwrap();
            rec.commit(true).unwrap();
            drop(rec);
            push::push(&store, &repo, &entry(), &mut |_, _| {}).unwrap();
            trees.push(tree(&store, store.head()));
            clones_as_kept(dir.path(), &store, &repo, &trees);
            for _ in 0..2 {
                let again = thin(&store, &repo, &entry(), false).unwrap();
                assert_eq!(again.packs_removed, 0, "{again:?}");
                assert_eq!(again.segments_after, 1, "{again:?}");
                nothing_left_over(&store, &remote, &repo);
                held_is_named(&store, &repo);
                clones_as_kept(dir.path(), &store, &repo, &trees);
            }
        }
    }

    /// A file rewritten with new content at every push: thinned to the newest moment, the
    /// remote keeps one version's packs of it.
    #[test]
    fn thinning_deletes_the_packs_only_pruned_moments_used() {
        std::env::set_var("CLAWFS_SCRYPT_LOG_N", "10");
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open_or_create(&dir.path().join("a")).unwrap();
        let remote = Arc::new(Flaky {
            budget: AtomicI64::new(-1),
            ..Default::default()
        });
        let (repo, _) = Repo::open(remote.clone(), "pw", true).unwrap();
        let churn = RelPath::new("churn").unwrap();
        let mut rec = store.recorder(SessionId(1)).unwrap();
        rec.create(&churn, NodeKind::File, Meta::default(), "")
            .unwrap();
        for i in 0..6 {
            rec.write(&churn, 0, &noise(i, 2 << 20)).unwrap();
            rec.commit(true).unwrap();
            push::push(&store, &repo, &entry(), &mut |_, _| {}).unwrap();
        }
        drop(rec);
        let before = remote.bytes();
        store
            .prune(&Plan::new(store.moments().unwrap(), [store.head()].into()))
            .unwrap();
        let r = thin(&store, &repo, &entry(), false).unwrap();
        assert_eq!(r.packs_removed, 5, "{r:?}");
        let after = remote.bytes();
        assert!(after * 4 < before, "{before} bytes before, {after} after");
        nothing_left_over(&store, &remote, &repo);
        let b = Store::open_or_create(&dir.path().join("b")).unwrap();
        let dev = pick_device(&repo, None, None).unwrap();
        clone_into(&b, &repo, &dev, "mem", &mut |_, _, _| {}).unwrap();
        assert_eq!(b.read_file(&churn, b.head()).unwrap(), noise(5, 2 << 20));
    }

    /// A log segment altered on the remote is refused, and nothing is written or deleted.
    #[test]
    fn a_tampered_log_is_refused_and_the_remote_left_as_it_is() {
        let dir = tempfile::tempdir().unwrap();
        let (store, _, remote, repo) = pruned(&dir.path().join("a"), 2);
        let name = remote.inner.list("log/").unwrap()[2].clone();
        remote.inner.tamper(&name, |v| {
            let i = v.len() / 2;
            v[i] ^= 1;
        });
        let objects = |r: &Flaky| -> Vec<(String, Vec<u8>)> {
            let names = r.inner.list("").unwrap();
            names
                .into_iter()
                .map(|n| (n.clone(), r.inner.get(&n).unwrap()))
                .collect()
        };
        let before = objects(&remote);
        let err = thin(&store, &repo, &entry(), false)
            .unwrap_err()
            .to_string();
        assert!(err.contains(&name), "{err}");
        assert_eq!(objects(&remote), before);
        assert!(load_journal(&store, "mem").unwrap().is_none());
    }

    /// Cut short after any number of writes and deletes, a thinning leaves a remote that clones
    /// to the kept moments, and the next one finishes the work and leaves nothing over.
    #[test]
    fn a_thinning_cut_short_anywhere_is_settled_by_the_next() {
        let mut cut = 0;
        loop {
            let dir = tempfile::tempdir().unwrap();
            let (store, trees, remote, repo) = pruned(&dir.path().join("a"), 1);
            remote.budget.store(cut, Ordering::SeqCst);
            let first = thin_in(&store, &repo, &entry(), false, SMALL);
            remote.budget.store(-1, Ordering::SeqCst);
            clones_as_kept(dir.path(), &store, &repo, &trees);
            held_is_named(&store, &repo);
            if let Ok(r) = first {
                assert!(cut > 8, "the thinning wrote only {cut} objects");
                assert!(r.segments_after >= 3, "{r:?}");
                break;
            }
            let second = thin_in(&store, &repo, &entry(), false, SMALL).unwrap();
            assert!(second.segments_after >= 3, "{second:?}");
            nothing_left_over(&store, &remote, &repo);
            clones_as_kept(dir.path(), &store, &repo, &trees);
            held_is_named(&store, &repo);
            assert!(load_journal(&store, "mem").unwrap().is_none());
            cut += 1;
        }
    }
}
