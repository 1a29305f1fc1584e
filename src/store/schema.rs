//! The on-disk layout of a store: one place that says what every file and key means.
//!
//! # Store directory
//! ```text
//! <store>/catalog/        sled database: the catalogue (below)
//! <store>/packs/<16 hex>.pack   append-only chunk packs (see `pack.rs`)
//! <store>/packs/index/<lo>-<hi>.idx   where each chunk is (see `chunk_index.rs`)
//! <store>/control.sock    the running daemon's control socket (0600)
//! <store>/config.json     per-store settings (ignore patterns, mounted directory)
//! ```
//!
//! # Catalogue
//! One sled tree: everything an epoch commits lives in [`TREE_CATALOG`]; records of
//! different kinds are told apart by a one-byte key prefix. An epoch is written as its journal
//! first (a [`JOURNAL`] entry, or the header of a compact epoch), then its records, then
//! [`META_HEAD`]; readers never look past the head, and sled recovers a prefix of its log, so
//! after a crash an epoch is whole or absent, never half-visible (a journal just past the head
//! marks one cut off: opening the store removes what it names; see `Store::write_epoch`).
//! Chunk locations are not in sled but in index files beside the packs (`chunk_index.rs`):
//! a chunk an epoch references is in a pack synced before the epoch's records are flushed, and
//! opening the store indexes any pack no index file covers.
//!
//! All integers in keys are big-endian so that sled's byte order is numeric order. Sequence
//! numbers inside keys are stored inverted (`!seq`) so that a forward scan from `(k, !s)` finds
//! the newest record at or before `s` first.
//!
//! | prefix | key | value |
//! |---|---|---|
//! | [`META`] | name bytes | see the `META_*` names |
//! | [`EPOCH`] | seq | [`crate::store::catalog::Epoch`], then for a compact epoch its [`crate::store::catalog::EpochBody`] |
//! | [`CHANGE`] | seq, index u32 | [`crate::store::catalog::Change`] (epochs that are not compact, written before format 5; still read) |
//! | [`CHANGES`] | seq, index u32 of the first | the changes from that index on, each bincode-encoded (bincode `Vec<Vec<u8>>`; epochs that are not compact) |
//! | [`DENTRY`] | parent path, 0, name, 0, !seq | [`crate::store::catalog::Dentry`] |
//! | [`NODE`] | node id, !seq | [`crate::store::catalog::NodeVersion`] |
//! | [`VERSION`] | version id | node id, seq (epochs up to [`META_VERSIONS_FROM`]; later ones in `version_index.rs` files) |
//! | [`MARK`] | name bytes | [`crate::store::catalog::Mark`] |
//! | [`SESSION`] | session id | [`crate::store::catalog::SessionInfo`] |
//! | [`TIME`] | time (ns since epoch), seq | empty; written by format 2 only, no longer read |
//! | [`JOURNAL`] | seq | the keys epoch `seq` wrote (bincode `Vec<Vec<u8>>`), besides `META` (epochs that are not compact) |
//!
//! Every record an epoch writes (besides `META`) is immutable once written: the journal entry
//! (or a compact epoch's header) names them, so the replicator can ship exactly one epoch's
//! records, and a clone can apply them in order to rebuild the catalogue. Epochs travel in one
//! shape whichever way they are stored: header, one [`CHANGE`] record per change, the rest.
//! Stored, the changes of a large epoch go [`CHANGES_PER_RECORD`] to a [`CHANGES`] record:
//! sled keeps memory for every page of 16 or so keys, so a key per change made an epoch that
//! touched 10,000 files cost the catalogue 10,000 keys for the rest of its life.
//!
//! Values are bincode-encoded serde structs.

use crate::ids::{NodeId, Seq, VersionId};

/// The format version this build reads and writes. A store with another refuses to open,
/// except one of [`UPGRADABLE_FORMATS`].
///
/// - 3: epochs no longer write [`TIME`] records (a time is found by a binary search over the
///   epoch headers); the next node id rides in [`META_HEAD`]; a small epoch is stored
///   compact (see [`COMPACT_MAX_CHANGES`]).
/// - 4: a file's run of one chunk is stored without a leaf listing it (a single segment,
///   `content::Segment::chunks` 0): a small file's version is one chunk, not two.
/// - 5: chunk locations move out of sled ([`TREE_CHUNKS_BEFORE_5`]) into index files beside
///   the packs; upgrading reads the packs once to write them, then drops the tree. The
///   changes of an epoch that is not compact are stored many to a [`CHANGES`] record. Version
///   ids are indexed in files, not in [`VERSION`] records (see [`META_VERSIONS_FROM`]).
pub const FORMAT_VERSION: u32 = 5;

/// An epoch with at most this many changes, [`COMPACT_MAX_RECORDS`] other records and a body of
/// at most [`COMPACT_MAX_BYTES`] is stored compact: its [`EPOCH`] record carries its changes and
/// the keys of its other records (`catalog::EpochBody`) and it has no [`CHANGE`] or
/// [`JOURNAL`] records. The header record is then written first and is the journal. A file
/// created and closed is one epoch of 5 records (9 in format 2); an unlink 3 (7 in format 2).
/// Larger epochs keep one record per change, so no record grows large (sled 0.34 rewrites a
/// value with its page).
pub const COMPACT_MAX_CHANGES: usize = 64;
/// See [`COMPACT_MAX_CHANGES`].
pub const COMPACT_MAX_RECORDS: usize = 256;
/// See [`COMPACT_MAX_CHANGES`].
pub const COMPACT_MAX_BYTES: u64 = 16 << 10;

/// Older formats this build opens and upgrades in place by rewriting the format number (and,
/// from format 4 and older, indexing the packs into files): everything the catalogue holds
/// reads as before (a format-2 store's [`TIME`] records are left, unread; leaves of one chunk
/// still read as they always did). The upgrade makes a build that knows only the old format
/// refuse the store rather than look for chunks in a tree no longer written.
pub const UPGRADABLE_FORMATS: &[u32] = &[2, 3, 4];

/// Sled tree holding every record an epoch commits.
pub const TREE_CATALOG: &str = "catalog";
/// Sled tree holding, under [`FOLD_NOTE`], a prune's fold being applied (bincode
/// `Vec<(key, Option<value>)>`: the records it sets and removes). Present only while a fold is
/// applied, or after a crash cut one short: opening the store applies it again (see
/// `prune.rs`). Kept out of [`TREE_CATALOG`], whose pages would carry it: beside the node
/// records the fold removes, its megabytes were written again with their pages, and a fold of
/// 40,000 records grew the catalogue by 426 MB. sled writes every tree to one log, so the
/// order of the note and the fold's writes holds across trees after a crash.
pub const TREE_FOLDING: &str = "folding";
/// The key of the note in [`TREE_FOLDING`].
pub const FOLD_NOTE: &[u8] = b"note";
/// Sled tree that mapped chunk id (32 bytes) to its location in a pack, up to format 4;
/// dropped on upgrade.
pub const TREE_CHUNKS_BEFORE_5: &str = "chunks";

/// Prefix of the changes an epoch carries, [`CHANGES_PER_RECORD`] to a record (format 5).
pub const CHANGES: u8 = b'G';
/// At most this many changes, and about [`COMPACT_MAX_BYTES`] of them, go in one [`CHANGES`]
/// record.
pub const CHANGES_PER_RECORD: usize = 256;

/// Prefix of store-wide values.
pub const META: u8 = b'M';
/// Prefix of epoch headers.
pub const EPOCH: u8 = b'E';
/// Prefix of the changes an epoch carries, one per record (before format 5; and the shape
/// in which epochs travel).
pub const CHANGE: u8 = b'C';
/// Prefix of directory entries over time.
pub const DENTRY: u8 = b'D';
/// Prefix of node versions over time.
pub const NODE: u8 = b'N';
/// Prefix of the version-id index.
pub const VERSION: u8 = b'V';
/// Prefix of marks.
pub const MARK: u8 = b'A';
/// Prefix of mount sessions.
pub const SESSION: u8 = b'S';
/// Prefix of format 2's time index (logs received from format-2 stores still carry it).
pub const TIME: u8 = b'T';

/// Prefix of the epoch journal.
pub const JOURNAL: u8 = b'J';

/// `META` key: the format version (u32 BE).
pub const META_FORMAT: &[u8] = b"format";
/// `META` key: the last committed epoch (u64 BE), then the next unused node id (u64 BE) as of
/// that epoch (format 3; format 2 kept it in [`META_NEXT_NODE`]). Nothing with a larger seq is
/// visible. One record, rewritten by every epoch, where two used to be.
pub const META_HEAD: &[u8] = b"head";
/// The [`META_HEAD`] value: epoch `seq` committed, `next_node` the next unused node id.
pub fn head_value(seq: Seq, next_node: u64) -> [u8; 16] {
    let mut v = [0u8; 16];
    v[..8].copy_from_slice(&seq.0.to_be_bytes());
    v[8..].copy_from_slice(&next_node.to_be_bytes());
    v
}

/// `META` key where builds before [`TREE_FOLDING`] kept a fold being applied (same value);
/// still read when the store opens.
pub const META_FOLDING: &[u8] = b"folding";

/// `META` key: how many seqs up to the head name no epoch (u64 BE), because a prune folded
/// them away here, or in the store that pushed the epochs this one received. Absent means 0.
pub const META_GAPS: &[u8] = b"gaps";

/// `META` key of format 2: the next unused node id (u64 BE). Read while [`META_HEAD`] carries
/// none (an upgraded store before its first epoch); no longer written.
pub const META_NEXT_NODE: &[u8] = b"next_node";

/// The last epoch whose [`VERSION`] records are in this tree (u64 big-endian): later epochs'
/// version ids are in index files beside the catalogue (`version_index.rs`), and their
/// [`VERSION`] records exist only in the shape epochs travel in. Set when a store is created
/// (0) or first opened by a build of format 5 (its head then).
pub const META_VERSIONS_FROM: &[u8] = b"versions_from";

/// Key of a `META` value.
pub fn meta_key(name: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(1 + name.len());
    k.push(META);
    k.extend_from_slice(name);
    k
}

/// Key of an epoch header.
pub fn epoch_key(seq: Seq) -> [u8; 9] {
    let mut k = [0u8; 9];
    k[0] = EPOCH;
    k[1..].copy_from_slice(&seq.0.to_be_bytes());
    k
}

/// Decodes the seq of an epoch key.
pub fn epoch_key_seq(k: &[u8]) -> Option<Seq> {
    Some(Seq(u64::from_be_bytes(k.get(1..9)?.try_into().ok()?)))
}

/// Key of the `i`th change of epoch `seq`.
pub fn change_key(seq: Seq, i: u32) -> [u8; 13] {
    let mut k = [0u8; 13];
    k[0] = CHANGE;
    k[1..9].copy_from_slice(&seq.0.to_be_bytes());
    k[9..].copy_from_slice(&i.to_be_bytes());
    k
}

/// Key of the [`CHANGES`] record of epoch `seq` that starts with its `first`th change.
pub fn changes_key(seq: Seq, first: u32) -> [u8; 13] {
    let mut k = change_key(seq, first);
    k[0] = CHANGES;
    k
}

/// Prefix of all [`CHANGES`] records of epoch `seq`.
pub fn changes_prefix(seq: Seq) -> [u8; 9] {
    let mut k = change_prefix(seq);
    k[0] = CHANGES;
    k
}

/// The index of a change key (or of the first change of a [`CHANGES`] key).
pub fn change_key_index(k: &[u8]) -> Option<u32> {
    (k.len() == 13).then(|| u32::from_be_bytes(k[9..13].try_into().expect("4 bytes")))
}

/// Prefix of all changes of epoch `seq`.
pub fn change_prefix(seq: Seq) -> [u8; 9] {
    let mut k = [0u8; 9];
    k[0] = CHANGE;
    k[1..].copy_from_slice(&seq.0.to_be_bytes());
    k
}

/// Prefix of every entry of directory `parent` (all names, all times).
pub fn dir_prefix(parent: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(2 + parent.len());
    k.push(DENTRY);
    k.extend_from_slice(parent.as_bytes());
    k.push(0);
    k
}

/// Prefix of every version of the entry `name` in `parent`.
pub fn dentry_prefix(parent: &str, name: &str) -> Vec<u8> {
    let mut k = dir_prefix(parent);
    k.extend_from_slice(name.as_bytes());
    k.push(0);
    k
}

/// Key of the entry `name` in `parent` as set by epoch `seq`.
pub fn dentry_key(parent: &str, name: &str, seq: Seq) -> Vec<u8> {
    let mut k = dentry_prefix(parent, name);
    k.extend_from_slice(&(!seq.0).to_be_bytes());
    k
}

/// Splits a dentry key into (name, seq), given the length of its directory prefix.
pub fn dentry_key_parts(k: &[u8], dir_prefix_len: usize) -> Option<(&str, Seq)> {
    let rest = k.get(dir_prefix_len..)?;
    if rest.len() < 9 {
        return None;
    }
    let (name, tail) = rest.split_at(rest.len() - 9);
    if tail[0] != 0 {
        return None;
    }
    let seq = !u64::from_be_bytes(tail[1..].try_into().ok()?);
    Some((std::str::from_utf8(name).ok()?, Seq(seq)))
}

/// Prefix of every version of a node.
pub fn node_prefix(node: NodeId) -> [u8; 9] {
    let mut k = [0u8; 9];
    k[0] = NODE;
    k[1..].copy_from_slice(&node.0.to_be_bytes());
    k
}

/// Key of the version of `node` set by epoch `seq`.
pub fn node_key(node: NodeId, seq: Seq) -> [u8; 17] {
    let mut k = [0u8; 17];
    k[..9].copy_from_slice(&node_prefix(node));
    k[9..].copy_from_slice(&(!seq.0).to_be_bytes());
    k
}

/// Decodes the seq of a node key.
pub fn node_key_seq(k: &[u8]) -> Option<Seq> {
    Some(Seq(!u64::from_be_bytes(k.get(9..17)?.try_into().ok()?)))
}

/// Key of a version id.
pub fn version_key(v: VersionId) -> [u8; 9] {
    let mut k = [0u8; 9];
    k[0] = VERSION;
    k[1..].copy_from_slice(&v.0.to_be_bytes());
    k
}

/// Value of a version-id record.
pub fn version_value(node: NodeId, seq: Seq) -> [u8; 16] {
    let mut v = [0u8; 16];
    v[..8].copy_from_slice(&node.0.to_be_bytes());
    v[8..].copy_from_slice(&seq.0.to_be_bytes());
    v
}

/// Decodes a version-id record's value into (node, seq).
pub fn version_value_parts(v: &[u8]) -> Option<(NodeId, Seq)> {
    (v.len() == 16).then(|| {
        (
            NodeId(u64::from_be_bytes(v[..8].try_into().expect("8 bytes"))),
            Seq(u64::from_be_bytes(v[8..].try_into().expect("8 bytes"))),
        )
    })
}

/// Decodes the node of a node key.
pub fn node_key_node(k: &[u8]) -> Option<NodeId> {
    (k.len() == 17).then(|| NodeId(u64::from_be_bytes(k[1..9].try_into().expect("8 bytes"))))
}

/// Key of a mark.
pub fn mark_key(name: &str) -> Vec<u8> {
    let mut k = vec![MARK];
    k.extend_from_slice(name.as_bytes());
    k
}

/// Key of a session record.
pub fn session_key(id: crate::ids::SessionId) -> [u8; 9] {
    let mut k = [0u8; 9];
    k[0] = SESSION;
    k[1..].copy_from_slice(&id.0.to_be_bytes());
    k
}

/// Key of the journal entry of epoch `seq`.
pub fn journal_key(seq: Seq) -> [u8; 9] {
    let mut k = [0u8; 9];
    k[0] = JOURNAL;
    k[1..].copy_from_slice(&seq.0.to_be_bytes());
    k
}

/// Decodes the seq of a time key.
pub fn time_key_seq(k: &[u8]) -> Option<Seq> {
    Some(Seq(u64::from_be_bytes(k.get(9..17)?.try_into().ok()?)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn dentry_keys_round_trip(parent in "[a-z/]{0,12}", name in "[^\0/]{1,12}", seq in any::<u64>()) {
            let k = dentry_key(&parent, &name, Seq(seq));
            let (n, s) = dentry_key_parts(&k, dir_prefix(&parent).len()).unwrap();
            prop_assert_eq!(n, name.as_str());
            prop_assert_eq!(s, Seq(seq));
        }

        #[test]
        fn newer_seqs_sort_first(node in any::<u64>(), a in any::<u64>(), b in any::<u64>()) {
            let (ka, kb) = (node_key(NodeId(node), Seq(a)), node_key(NodeId(node), Seq(b)));
            prop_assert_eq!(a.cmp(&b), kb.cmp(&ka));
            prop_assert_eq!(node_key_seq(&ka), Some(Seq(a)));
        }
    }

    #[test]
    fn directory_prefixes_do_not_capture_subdirectories() {
        let a = dir_prefix("a");
        assert!(!dentry_key("a/b", "x", Seq(1)).starts_with(&a));
        assert!(dentry_key("a", "x", Seq(1)).starts_with(&a));
    }
}
