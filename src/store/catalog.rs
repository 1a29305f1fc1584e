//! The records the catalogue holds (see `schema.rs` for where each lives).

use std::collections::BTreeMap;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::ids::{NodeId, SessionId};
use crate::store::content::Content;
use crate::store::error::{Result, StoreError};

/// What a node is. It never changes over a node's life.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum NodeKind {
    /// A regular file.
    File,
    /// A directory.
    Dir,
    /// A symbolic link.
    Symlink,
}

/// Ownership, permissions and modification time.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Meta {
    /// Permission bits (`0o7777`), without the file type.
    pub mode: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Modification time, nanoseconds since the Unix epoch.
    pub mtime_ns: i64,
}

/// The operation that produced a version or a change.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Op {
    /// A new file, directory or symlink.
    Create,
    /// Bytes written.
    Write,
    /// Size changed by truncate.
    Truncate,
    /// Mode, owner or times changed.
    Attr,
    /// Extended attributes changed.
    Xattr,
    /// Removed (unlink or rmdir).
    Delete,
    /// Renamed here from another path (`other`).
    RenameFrom,
    /// Renamed from here to another path (`other`).
    RenameTo,
    /// Hard-linked here from another path (`other`).
    Link,
    /// Content captured from the real file (first mount, or a change made while unmounted).
    Import,
    /// Written back by a rollback, from the moment in `other`.
    Restore,
}

impl Op {
    /// A short lower-case word for people and JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            Op::Create => "create",
            Op::Write => "write",
            Op::Truncate => "truncate",
            Op::Attr => "attr",
            Op::Xattr => "xattr",
            Op::Delete => "delete",
            Op::RenameFrom => "rename-from",
            Op::RenameTo => "rename-to",
            Op::Link => "link",
            Op::Import => "import",
            Op::Restore => "restore",
        }
    }
}

/// One version of a node.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeVersion {
    /// What the node is.
    pub kind: NodeKind,
    /// Permissions, owner, mtime.
    pub meta: Meta,
    /// File bytes (empty for directories and symlinks).
    pub content: Content,
    /// Symlink target (empty otherwise).
    pub target: String,
    /// Extended attributes.
    pub xattrs: BTreeMap<Vec<u8>, Vec<u8>>,
    /// The last operation that changed it in its epoch.
    pub op: Op,
}

impl NodeVersion {
    /// A fresh node.
    pub fn new(kind: NodeKind, meta: Meta) -> NodeVersion {
        NodeVersion {
            kind,
            meta,
            content: Content::default(),
            target: String::new(),
            xattrs: BTreeMap::new(),
            op: Op::Create,
        }
    }

    /// Size in bytes as `stat` shows it.
    pub fn size(&self) -> u64 {
        match self.kind {
            NodeKind::File => self.content.size,
            NodeKind::Symlink => self.target.len() as u64,
            NodeKind::Dir => 0,
        }
    }

    /// True when two versions would read back the same (content, kind, target, mode, extended
    /// attributes).
    pub fn same_data(&self, other: &NodeVersion) -> bool {
        self.kind == other.kind
            && self.content == other.content
            && self.target == other.target
            && self.meta.mode == other.meta.mode
            && self.xattrs == other.xattrs
    }
}

/// What a name in a directory pointed at from some epoch on.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Dentry {
    /// The node, or `None` once the name was removed.
    pub node: Option<NodeId>,
    /// The node's kind (so listings need not load nodes).
    pub kind: NodeKind,
    /// How the name came to point here.
    pub op: Op,
    /// The other path of a rename, link or restore.
    pub other: Option<String>,
}

/// An epoch's header.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Epoch {
    /// When it was committed, nanoseconds since the Unix epoch.
    pub time_ns: i64,
    /// The mount session (or CLI run) that made it.
    pub session: SessionId,
    /// Number of changes it carries.
    pub changes: u32,
    /// Bytes it added to the chunk store.
    pub stored_bytes: u64,
}

/// What a small epoch's header record carries after the [`Epoch`] itself (format 3): its
/// changes and the keys of its other records, so that such an epoch is one record fewer per
/// change and needs no journal entry. See `schema` for when an epoch is written this way.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EpochBody {
    /// The encoded [`Change`]s, in order.
    pub changes: Vec<Vec<u8>>,
    /// The keys of the epoch's other records (its journal), in key order.
    pub keys: Vec<Vec<u8>>,
}

/// Splits an epoch header record into the header and, for a compact epoch, its body.
pub fn decode_epoch(bytes: &[u8], seq: crate::ids::Seq) -> Result<(Epoch, Option<EpochBody>)> {
    let epoch: Epoch = decode(bytes, || format!("epoch {seq}"))?;
    let used = bincode::serialized_size(&epoch).expect("an epoch header has a size") as usize;
    let rest = bytes.get(used..).unwrap_or_default();
    if rest.is_empty() {
        return Ok((epoch, None));
    }
    let body = decode(rest, || format!("changes of epoch {seq}"))?;
    Ok((epoch, Some(body)))
}

/// One change in an epoch, for `log`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Change {
    /// The path changed.
    pub path: String,
    /// How.
    pub op: Op,
    /// The node it concerns.
    pub node: Option<NodeId>,
    /// The other path of a rename or link.
    pub other: Option<String>,
    /// File size after the epoch, when it is a file.
    pub size: Option<u64>,
}

/// A named moment.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Mark {
    /// Its name.
    pub name: String,
    /// The epoch it names.
    pub seq: crate::ids::Seq,
    /// When it was made.
    pub time_ns: i64,
    /// What the user said about it.
    pub message: String,
    /// Made automatically before a rollback.
    pub safety: bool,
}

/// A mount session or CLI run that recorded changes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionInfo {
    /// Its id.
    pub id: SessionId,
    /// What it was: "mount", "rollback", "import".
    pub kind: String,
    /// When it started.
    pub started_ns: i64,
    /// When it ended cleanly, if it did.
    pub ended_ns: Option<i64>,
    /// Process id of the daemon or CLI.
    pub pid: u32,
}

/// Encodes a record.
pub fn encode<T: Serialize>(v: &T) -> Vec<u8> {
    bincode::serialize(v).expect("catalogue records always encode")
}

/// Decodes a record, naming it in the error.
pub fn decode<T: DeserializeOwned>(bytes: &[u8], what: impl FnOnce() -> String) -> Result<T> {
    bincode::deserialize(bytes).map_err(|e| StoreError::CorruptCatalog {
        what: what(),
        detail: e.to_string(),
    })
}

/// Nanoseconds since the Unix epoch, now.
pub fn now_ns() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or(0)
}
