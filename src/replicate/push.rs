//! One push: ship to a remote the epochs it lacks, and the chunks they use that it lacks.
//!
//! The cursor (the last epoch the remote has) and the set of chunks already uploaded live in
//! side trees of the store, written only after the remote confirmed every object of a
//! segment. A push cut short anywhere (crash, outage, kill) is therefore simply redone: packs
//! and indexes get the same keyed names, and a segment that did land is recognised by its
//! content and adopted instead of uploaded again.

use std::collections::HashSet;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::ids::{ChunkId, NodeId, Seq};
use crate::relpath::RelPath;
use crate::remote::Traffic;
use crate::replicate::layout::{self, DeviceState, Index, IndexEntry, LogSegment};
use crate::replicate::repo::Repo;
use crate::replicate::settings::RemoteEntry;
use crate::replicate::{ReplicaError, Result};
use crate::store::catalog::{decode, now_ns, Change, Dentry, NodeVersion};
use crate::store::pack::PACK_TARGET;
use crate::store::replica::EpochRecords;
use crate::store::rollback::is_secret;
use crate::store::{schema, Store};

/// Catalogue records per log segment, at most (bounds memory on a first push of a long history).
const SEGMENT_MAX_BYTES: usize = 16 << 20;

/// What the store remembers about one remote.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PushState {
    /// The newest epoch the remote holds.
    pub pushed: Seq,
    /// When a push last completed.
    pub last_push_ns: Option<i64>,
    /// The last error, until a push succeeds.
    pub last_error: Option<String>,
    /// Digest of the marks object last uploaded.
    pub marks_digest: Option<String>,
    /// Bytes uploaded over the remote's lifetime.
    pub bytes_up: u64,
}

/// What a push did.
#[derive(Clone, Debug, Default, Serialize)]
pub struct PushReport {
    /// The remote.
    pub remote: String,
    /// The newest epoch the remote holds now.
    pub pushed: Seq,
    /// Epochs shipped.
    pub epochs: u64,
    /// Chunks shipped.
    pub chunks: u64,
    /// Pack objects written.
    pub packs: u64,
    /// Requests and bytes.
    pub traffic: Traffic,
}

pub(crate) const STATE_TREE: &str = "remote-state";
const DEVICE_KEY: &[u8] = b"\0device";

pub(crate) fn chunk_tree(store: &Store, remote: &str) -> Result<sled::Tree> {
    Ok(store.side_tree(&format!("remote-chunks:{remote}"))?)
}

/// This store's device id, made on first use.
pub fn device_id(store: &Store) -> Result<String> {
    let t = store.side_tree(STATE_TREE)?;
    let id = match t.get(DEVICE_KEY)? {
        Some(v) => String::from_utf8_lossy(&v).into_owned(),
        None => {
            let id = super::new_device_id();
            t.insert(DEVICE_KEY, id.as_bytes())?;
            id
        }
    };
    publish_device_id(store.dir(), &id);
    Ok(id)
}

/// Adopts a device id (a clone continues the history of the device it came from).
pub fn set_device_id(store: &Store, id: &str) -> Result<()> {
    store
        .side_tree(STATE_TREE)?
        .insert(DEVICE_KEY, id.as_bytes())?;
    publish_device_id(store.dir(), id);
    Ok(())
}

/// The file beside the catalogue that names the store's device id, so that a command can
/// learn it without opening the store (which the mount daemon holds).
const DEVICE_FILE: &str = "device-id";

fn publish_device_id(store_dir: &Path, id: &str) {
    let path = store_dir.join(DEVICE_FILE);
    if std::fs::read_to_string(&path).ok().as_deref() != Some(id) {
        if let Err(e) = std::fs::write(&path, id) {
            tracing::warn!(error = %e, path = %path.display(), "could not write the device id file");
        }
    }
}

/// The device id of the store in `store_dir`, if it has one, without opening the store.
pub fn published_device_id(store_dir: &Path) -> Option<String> {
    std::fs::read_to_string(store_dir.join(DEVICE_FILE))
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
}

/// The state of a remote.
pub fn load_state(store: &Store, remote: &str) -> Result<PushState> {
    let t = store.side_tree(STATE_TREE)?;
    Ok(match t.get(remote.as_bytes())? {
        Some(v) => serde_json::from_slice(&v).unwrap_or_default(),
        None => PushState::default(),
    })
}

/// Saves the state of a remote.
pub fn save_state(store: &Store, remote: &str, s: &PushState) -> Result<()> {
    store
        .side_tree(STATE_TREE)?
        .insert(remote.as_bytes(), serde_json::to_vec(s).expect("encodes"))?;
    Ok(())
}

/// Marks chunks as held by a remote (after a clone from it).
pub fn note_chunks(store: &Store, remote: &str, ids: impl Iterator<Item = ChunkId>) -> Result<()> {
    let t = chunk_tree(store, remote)?;
    let mut b = sled::Batch::default();
    for id in ids {
        b.insert(&id.0, &[][..]);
    }
    t.apply_batch(b)?;
    Ok(())
}

/// Pushes every epoch the remote lacks. `progress(done, total)` counts chunk records. A
/// failure is also kept in the remote's state, with its time, for `status` to show until a
/// push succeeds.
pub fn push(
    store: &Store,
    repo: &Repo,
    entry: &RemoteEntry,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<PushReport> {
    // A bug that panics here fails this push like any other error (kept for `status`).
    let r = crate::replicate::contained("the push", || push_inner(store, repo, entry, progress));
    if let Err(e) = &r {
        if let Ok(mut st) = load_state(store, &entry.name) {
            st.last_error = Some(format!("{e} ({})", crate::when::show_time(now_ns())));
            let _ = save_state(store, &entry.name, &st);
        }
    }
    r
}

fn push_inner(
    store: &Store,
    repo: &Repo,
    entry: &RemoteEntry,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<PushReport> {
    let device = device_id(store)?;
    let head = store.head();
    // What we ship must be durable here first.
    store.flush()?;
    let mut state = load_state(store, &entry.name)?;
    let have = chunk_tree(store, &entry.name)?;
    reconcile(store, repo, &device, head, &mut state, &have)?;
    let before = repo.traffic();
    let mut report = PushReport {
        remote: entry.name.clone(),
        ..Default::default()
    };
    if state.pushed < head {
        repo.ensure_current_format()?;
    }
    while state.pushed < head {
        let epochs = next_epochs(store, state.pushed, head)?;
        // A segment answers for every seq from the last one on: those a prune folded away
        // here too, so that a restore finds the segments end to end.
        let (from, to) = (state.pushed.next(), epochs[epochs.len() - 1].seq);
        let mut epochs = epochs;
        if !entry.include_secrets {
            strip_secrets(&mut epochs)?;
        }
        let needed = needed_chunks(
            store,
            &epochs,
            &|id| Ok(have.contains_key(id.0)?),
            &mut HashSet::new(),
        )?;
        let (index_name, packs) = upload_chunks(store, repo, &needed, progress)?;
        let seg = LogSegment {
            repo_id: repo.id().to_string(),
            device: device.clone(),
            from,
            to,
            pushed_ns: now_ns(),
            next_node: store.next_node()?,
            indexes: index_name.into_iter().collect(),
            epochs,
        };
        repo.put_sealed(
            &layout::log_name(&device, from, to),
            &layout::pack_struct(&seg),
        )?;
        note_chunks(store, &entry.name, needed.iter().copied())?;
        report.epochs += to.0 - from.0 + 1;
        report.chunks += needed.len() as u64;
        report.packs += packs;
        state.pushed = to;
        save_state(store, &entry.name, &state)?;
    }
    push_marks(store, repo, &device, head, &mut state)?;
    report.traffic = repo.traffic().since(&before);
    state.last_push_ns = Some(now_ns());
    state.last_error = None;
    state.bytes_up += report.traffic.bytes_up;
    save_state(store, &entry.name, &state)?;
    store.flush()?;
    report.pushed = state.pushed;
    Ok(report)
}

/// Makes the cursor agree with what the remote really holds.
fn reconcile(
    store: &Store,
    repo: &Repo,
    device: &str,
    head: Seq,
    state: &mut PushState,
    have: &sled::Tree,
) -> Result<()> {
    let segs = repo.segments(device)?;
    let remote_to = segs.last().map(|s| s.1).unwrap_or(Seq::ZERO);
    if remote_to == state.pushed {
        return Ok(());
    }
    let diverged = || {
        ReplicaError::Usage(format!(
            "the remote's log of device {device} reaches epoch {remote_to} but does not match this store \
             (another machine pushes as this device?); nothing was pushed"
        ))
    };
    if remote_to > state.pushed {
        // A push that uploaded its segment but died before saving the cursor, or a stranger.
        if remote_to > head {
            return Err(diverged());
        }
        let seg = repo.segment(&segs.last().expect("non-empty").2)?;
        if store.epoch(remote_to)?.is_none() {
            // A prune here folded that moment away after the segment was uploaded: the
            // remote holds what this store held then, and the next segment continues it.
            tracing::info!(device, epoch = %remote_to, "the remote holds epochs a cut-short push uploaded before a prune folded them");
            state.pushed = remote_to;
            return Ok(());
        }
        let ours = store.epoch_records(remote_to)?.ok_or_else(diverged)?;
        let theirs = seg.epochs.last().ok_or_else(diverged)?;
        let epoch_rec = |e: &EpochRecords| {
            e.records
                .iter()
                .find(|(k, _)| k.first() == Some(&schema::EPOCH))
                .cloned()
        };
        if epoch_rec(&ours).is_none() || epoch_rec(&ours) != epoch_rec(theirs) {
            return Err(diverged());
        }
        tracing::info!(device, epoch = %remote_to, "the remote already holds epochs a cut-short push uploaded");
        state.pushed = remote_to;
    } else {
        // The remote lost what we pushed (a new bucket under the same name): start over.
        tracing::warn!(device, remote_to = %remote_to, pushed = %state.pushed, "the remote holds less than was pushed to it; pushing again from there");
        state.pushed = remote_to;
        have.clear()?;
        state.marks_digest = None;
    }
    Ok(())
}

/// The epochs after `pushed`, up to about [`SEGMENT_MAX_BYTES`] of records. Moments a prune
/// folded away are not there, and are not asked for.
fn next_epochs(store: &Store, pushed: Seq, head: Seq) -> Result<Vec<EpochRecords>> {
    let mut out = Vec::new();
    let mut bytes = 0usize;
    for epoch in store.epochs_from(pushed.next(), head) {
        if !out.is_empty() && bytes >= SEGMENT_MAX_BYTES {
            break;
        }
        let (s, _) = epoch?;
        let e = journaled(store, s)?;
        bytes += e
            .records
            .iter()
            .map(|(k, v)| k.len() + v.len())
            .sum::<usize>();
        out.push(e);
    }
    Ok(out)
}

/// The records of epoch `s`, as shipped.
pub(crate) fn journaled(store: &Store, s: Seq) -> Result<EpochRecords> {
    store.epoch_records(s)?.ok_or_else(|| {
        ReplicaError::Usage(format!(
            "epoch {s} has no journal entry: the store cannot be replicated"
        ))
    })
}

fn node_of_key(k: &[u8]) -> Option<NodeId> {
    Some(NodeId(u64::from_be_bytes(k.get(1..9)?.try_into().ok()?)))
}

fn dentry_parent(k: &[u8]) -> Option<NodeId> {
    let hexpart = k.get(1..17)?;
    u64::from_str_radix(std::str::from_utf8(hexpart).ok()?, 16)
        .ok()
        .map(NodeId)
}

fn secret_path(p: &str) -> bool {
    RelPath::new(p).map(|r| is_secret(&r)).unwrap_or(false)
}

/// Drops every record about `credentials/**` and `**/auth-profiles.json`: their changes, their
/// nodes' versions, and the entries naming them, so the remote learns neither their content
/// nor that they exist.
pub(crate) fn strip_secrets(epochs: &mut [EpochRecords]) -> Result<()> {
    for e in epochs {
        let mut secret: HashSet<NodeId> = HashSet::new();
        for (k, v) in &e.records {
            if k.first() == Some(&schema::CHANGE) {
                let c: Change = decode(v, || "change".into())?;
                if secret_path(&c.path) || c.other.as_deref().is_some_and(secret_path) {
                    secret.extend(c.node);
                }
            }
        }
        let mut keep = Vec::with_capacity(e.records.len());
        for (k, v) in std::mem::take(&mut e.records) {
            let drop = match k.first().copied() {
                Some(schema::CHANGE) => {
                    let c: Change = decode(&v, || "change".into())?;
                    secret_path(&c.path) || c.node.is_some_and(|n| secret.contains(&n))
                }
                Some(schema::NODE) => node_of_key(&k).is_some_and(|n| secret.contains(&n)),
                Some(schema::VERSION) => {
                    v.len() >= 8
                        && secret
                            .contains(&NodeId(u64::from_be_bytes(v[..8].try_into().expect("8"))))
                }
                Some(schema::DENTRY) => {
                    let d: Dentry = decode(&v, || "entry".into())?;
                    dentry_parent(&k).is_some_and(|p| secret.contains(&p))
                        || d.node.is_some_and(|n| secret.contains(&n))
                }
                _ => false,
            };
            if !drop {
                keep.push((k, v));
            }
        }
        e.records = keep;
    }
    Ok(())
}

/// The chunks (and chunk-list leaves) the epochs' file versions use that are neither `held`
/// nor in `seen`, in order of first use; each one returned is added to `seen`.
pub(crate) fn needed_chunks(
    store: &Store,
    epochs: &[EpochRecords],
    held: &dyn Fn(&ChunkId) -> Result<bool>,
    seen: &mut HashSet<ChunkId>,
) -> Result<Vec<ChunkId>> {
    let mut out = Vec::new();
    let missing = |id: &ChunkId, seen: &HashSet<ChunkId>| -> Result<bool> {
        Ok(!seen.contains(id) && !held(id)?)
    };
    for e in epochs {
        for (k, v) in &e.records {
            if k.first() != Some(&schema::NODE) {
                continue;
            }
            let nv: NodeVersion = decode(v, || "node version".into())?;
            for seg in &nv.content.segments {
                if !missing(&seg.leaf, seen)? {
                    continue;
                }
                // A single segment's "leaf" is its chunk, listed here as its only chunk.
                for r in store.chunks().leaf(seg)?.iter() {
                    if missing(&r.id, seen)? {
                        seen.insert(r.id);
                        out.push(r.id);
                    }
                }
                if !seg.is_single() {
                    seen.insert(seg.leaf);
                    out.push(seg.leaf);
                }
            }
        }
    }
    Ok(out)
}

/// Uploads the chunk records in packs of about [`PACK_TARGET`] bytes; `before_put` learns each
/// pack's name before it is written. Returns what the packs hold.
pub(crate) fn upload_packs(
    store: &Store,
    repo: &Repo,
    ids: &[ChunkId],
    before_put: &mut dyn FnMut(&str) -> Result<()>,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<Index> {
    let mut index = Index::default();
    let mut buf: Vec<u8> = Vec::with_capacity(PACK_TARGET as usize + (1 << 17));
    let mut entries: Vec<IndexEntry> = Vec::new();
    let total = ids.len() as u64;
    let mut flush =
        |buf: &mut Vec<u8>, entries: &mut Vec<IndexEntry>, index: &mut Index| -> Result<()> {
            let name = layout::pack_name(&repo.keys().keyed_id("pack", buf));
            before_put(&name)?;
            repo.put_sealed(&name, buf)?;
            index.packs.push((name, std::mem::take(entries)));
            buf.clear();
            Ok(())
        };
    for (i, id) in ids.iter().enumerate() {
        let rec = store.packs().raw_record(id)?;
        entries.push(IndexEntry {
            id: *id,
            offset: buf.len() as u32,
            len: rec.len() as u32,
        });
        buf.extend_from_slice(&rec);
        if buf.len() as u64 >= PACK_TARGET {
            flush(&mut buf, &mut entries, &mut index)?;
        }
        progress(i as u64 + 1, total);
    }
    if !buf.is_empty() {
        flush(&mut buf, &mut entries, &mut index)?;
    }
    Ok(index)
}

/// The name an index object gets.
pub(crate) fn index_object(repo: &Repo, index: &Index) -> (String, Vec<u8>) {
    let plain = layout::pack_struct(index);
    (
        layout::index_name(&repo.keys().keyed_id("index", &plain)),
        plain,
    )
}

/// Uploads the chunk records in packs, then their index.
fn upload_chunks(
    store: &Store,
    repo: &Repo,
    ids: &[ChunkId],
    progress: &mut dyn FnMut(u64, u64),
) -> Result<(Option<String>, u64)> {
    if ids.is_empty() {
        return Ok((None, 0));
    }
    let index = upload_packs(store, repo, ids, &mut |_| Ok(()), progress)?;
    let (name, plain) = index_object(repo, &index);
    repo.put_sealed(&name, &plain)?;
    Ok((Some(name), index.packs.len() as u64))
}

fn push_marks(
    store: &Store,
    repo: &Repo,
    device: &str,
    head: Seq,
    state: &mut PushState,
) -> Result<()> {
    let marks = store.marks()?;
    let sessions = store.sessions()?;
    let digest = {
        use sha2::Digest;
        hex::encode(sha2::Sha256::digest(layout::pack_struct(&(
            &marks, &sessions,
        ))))
    };
    if state.marks_digest.as_deref() == Some(digest.as_str()) {
        return Ok(());
    }
    let ds = DeviceState {
        device: device.to_string(),
        head,
        pushed_ns: now_ns(),
        marks,
        sessions,
    };
    repo.put_sealed(&layout::marks_name(device), &layout::pack_struct(&ds))?;
    state.marks_digest = Some(digest);
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::ids::SessionId;
    use crate::relpath::RelPath;
    use crate::remote::MemRemote;
    use crate::store::catalog::{Meta, NodeKind};

    /// A bug that panics during a push (here, in the progress callback) fails that push like a
    /// lost connection: the caller gets an error naming it, `status` keeps it as the remote's
    /// last error, and the next push goes through and clears it.
    #[test]
    fn a_panic_during_a_push_is_a_failed_push() {
        std::env::set_var("CLAWFS_SCRYPT_LOG_N", "10");
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open_or_create(dir.path()).unwrap();
        let mut rec = store.recorder(SessionId(1)).unwrap();
        let path = RelPath::new("MEMORY.md").unwrap();
        rec.create(&path, NodeKind::File, Meta::default(), "")
            .unwrap();
        rec.write(&path, 0, b"remember the user's name").unwrap();
        rec.commit(true).unwrap();
        let (repo, _) = Repo::open(Arc::new(MemRemote::default()), "pw", true).unwrap();
        let entry = RemoteEntry::in_memory();

        let err = push(&store, &repo, &entry, &mut |_, _| {
            panic!("injected failure")
        })
        .unwrap_err();
        assert!(
            err.to_string()
                .contains("the push failed inside clawfs (injected failure)"),
            "{err}"
        );
        let kept = load_state(&store, &entry.name).unwrap().last_error;
        assert!(kept.is_some_and(|e| e.contains("injected failure")));

        let report = push(&store, &repo, &entry, &mut |_, _| {}).unwrap();
        assert_eq!(report.epochs, 1);
        assert_eq!(load_state(&store, &entry.name).unwrap().last_error, None);
    }
}
