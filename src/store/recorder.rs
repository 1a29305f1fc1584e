//! Recording changes: one epoch gathered in memory, committed atomically.
//!
//! A [`Recorder`] is the store's only writer. It mirrors, operation by operation, what a writer
//! did to the real tree (create, write, truncate, rename, link, unlink, …), keyed by path. Writes
//! are kept as byte extents (copies of what was written), so that an epoch is an exact cut of the
//! write history even while the real file keeps changing. [`Recorder::commit`] turns the pending
//! operations into one epoch: every touched file is re-chunked around its dirty ranges only,
//! its records are written, and the head moves forward (`Store::write_epoch`: whole or not at
//! all, even across a crash).
//!
//! The recorder is strict: an operation that does not fit the recorded tree (a write to a path
//! it does not know) is an error. The overlay turns such errors into a re-import of the path
//! from the real file, so versioning heals itself instead of drifting.

use std::borrow::Cow;
use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};
use std::ops::Bound::{Excluded, Unbounded};
use std::sync::Arc;

use crate::ids::{NodeId, Seq, SessionId, VersionId};
use crate::relpath::RelPath;
use crate::store::catalog::{
    encode, now_ns, Change, Dentry, Epoch, Meta, NodeKind, NodeVersion, Op,
};
use crate::store::chunker::Policy;
use crate::store::chunks::ChunkStore;
use crate::store::content::{rewrite, Content, ContentReader, ReadAt};
use crate::store::error::{Result, StoreError};
use crate::store::query::parent_key;
use crate::store::{schema, Store};

/// How a rename treats an existing destination (the `renameat2` flags).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RenameMode {
    /// Replace the destination if it exists (plain `rename`).
    Replace,
    /// Fail if the destination exists (`RENAME_NOREPLACE`).
    NoReplace,
    /// Swap source and destination, both must exist (`RENAME_EXCHANGE`).
    Exchange,
}

/// Attribute changes; `None` leaves a field alone.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MetaUpdate {
    /// New permission bits.
    pub mode: Option<u32>,
    /// New owner.
    pub uid: Option<u32>,
    /// New group.
    pub gid: Option<u32>,
    /// New modification time.
    pub mtime_ns: Option<i64>,
}

/// What a commit did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Committed {
    /// The new epoch.
    pub seq: Seq,
    /// Bytes added to the chunk store.
    pub stored_bytes: u64,
    /// Bytes of content that were chunked and hashed.
    pub hashed_bytes: u64,
}

/// Pending content of one file: the committed content (or an outside source) with writes on top.
struct PendingData {
    base: Base,
    /// Base bytes at and beyond this offset were cut off by a truncate: they read as zeros.
    valid_base: u64,
    size: u64,
    /// Non-overlapping written extents, by start offset.
    extents: BTreeMap<u64, Vec<u8>>,
}

enum Base {
    Stored(ContentReader),
    /// The whole content comes from outside (an import): everything is dirty.
    External(Arc<dyn ReadAt>),
}

impl Base {
    fn reader(&self) -> &dyn ReadAt {
        match self {
            Base::Stored(r) => r,
            Base::External(r) => r.as_ref(),
        }
    }
}

/// A written extent at least this long is kept as the buffer it arrived in, not copied onto the
/// extent before it.
const KEEP_BUFFER: usize = 64 << 10;

impl PendingData {
    fn write(&mut self, off: u64, data: Cow<'_, [u8]>) {
        if data.is_empty() {
            return;
        }
        let end = off + data.len() as u64;
        // Cut overlapping extents back to what lies outside [off, end).
        let overlapping: Vec<u64> = self
            .extents
            .range(..end)
            .rev()
            .take_while(|(s, v)| *s + v.len() as u64 > off)
            .map(|(s, _)| *s)
            .collect();
        for s in overlapping {
            let v = self.extents.remove(&s).expect("listed");
            let e = s + v.len() as u64;
            if s < off {
                self.extents.insert(s, v[..(off - s) as usize].to_vec());
            }
            if e > end {
                self.extents.insert(end, v[(end - s) as usize..].to_vec());
            }
        }
        // Extend the extent that ends exactly here (sequential writes), else start one.
        let prev = self
            .extents
            .range_mut(..off)
            .next_back()
            .filter(|(s, v)| **s + v.len() as u64 == off);
        match (prev, data) {
            (Some((_, v)), Cow::Borrowed(data)) => v.extend_from_slice(data),
            (Some((_, v)), Cow::Owned(data)) if data.len() < KEEP_BUFFER => {
                v.extend_from_slice(&data)
            }
            (_, data) => {
                self.extents.insert(off, data.into_owned());
            }
        }
        self.size = self.size.max(end);
    }

    fn truncate(&mut self, size: u64) {
        let beyond: Vec<u64> = self.extents.range(size..).map(|(s, _)| *s).collect();
        for s in beyond {
            self.extents.remove(&s);
        }
        if let Some((s, v)) = self.extents.range_mut(..size).next_back() {
            let keep = (size - *s) as usize;
            if v.len() > keep {
                v.truncate(keep);
            }
        }
        self.valid_base = self.valid_base.min(size);
        self.size = size;
    }

    fn dirty(&self) -> Vec<(u64, u64)> {
        let mut d: Vec<(u64, u64)> = self
            .extents
            .iter()
            .map(|(s, v)| (*s, s + v.len() as u64))
            .collect();
        if self.size > self.valid_base {
            d.push((self.valid_base, self.size));
        }
        if let Base::External(_) = self.base {
            d.push((0, self.size));
        }
        d
    }

    fn extent_bytes(&self) -> u64 {
        self.extents.values().map(|v| v.len() as u64).sum()
    }
}

/// A run of a file's pending content, as [`PendingData::walk`] finds it.
enum Piece<'a> {
    /// Bytes a pending write put there.
    Written(&'a [u8]),
    /// This many bytes no pending write covers.
    Gap(usize),
}

impl PendingData {
    /// The written extent that holds byte `off`, with its start.
    fn extent_at(&self, off: u64) -> Option<(&u64, &Vec<u8>)> {
        self.extents
            .range(..=off)
            .next_back()
            .filter(|(s, v)| **s + v.len() as u64 > off)
    }

    /// Calls `f` with each run of `off..end` (within the size) in order, and the offset where it
    /// starts: the written extents, and the gaps between them.
    fn walk(
        &self,
        off: u64,
        end: u64,
        mut f: impl FnMut(u64, Piece<'_>) -> Result<()>,
    ) -> Result<()> {
        if off >= end {
            return Ok(()); // (and a range with both ends excluded and equal would panic)
        }
        let first = self.extent_at(off);
        let rest = self.extents.range((Excluded(off), Excluded(end)));
        let mut at = off;
        for (s, v) in first.into_iter().chain(rest) {
            if *s > at {
                f(at, Piece::Gap((*s - at) as usize))?;
            }
            let from = (*s).max(at);
            let to = (s + v.len() as u64).min(end);
            f(
                from,
                Piece::Written(&v[(from - s) as usize..(to - s) as usize]),
            )?;
            at = to;
        }
        if at < end {
            f(at, Piece::Gap((end - at) as usize))?;
        }
        Ok(())
    }

    /// Fills `out` with the bytes of a gap at `at`: the base's where it is valid, zeros beyond.
    fn fill_gap(&self, at: u64, out: &mut [u8]) -> Result<()> {
        let valid = (self.valid_base.saturating_sub(at) as usize).min(out.len());
        let got = if valid > 0 {
            // The outside source may have shrunk since it was captured: what is missing reads
            // as zeros, and the next epoch re-captures it.
            self.base.reader().read_at(at, &mut out[..valid])?
        } else {
            0
        };
        out[got..].fill(0);
        Ok(())
    }
}

impl ReadAt for PendingData {
    fn read_at(&self, off: u64, buf: &mut [u8]) -> Result<usize> {
        if off >= self.size {
            return Ok(0);
        }
        let n = ((self.size - off) as usize).min(buf.len());
        self.walk(off, off + n as u64, |at, piece| {
            let i = (at - off) as usize;
            match piece {
                Piece::Written(bytes) => {
                    buf[i..i + bytes.len()].copy_from_slice(bytes);
                    Ok(())
                }
                Piece::Gap(len) => self.fill_gap(at, &mut buf[i..i + len]),
            }
        })?;
        Ok(n)
    }

    /// Written extents are copied straight onto `out`; only gaps are zeroed first.
    fn read_append(&self, off: u64, len: usize, out: &mut Vec<u8>) -> Result<usize> {
        if off >= self.size {
            return Ok(0);
        }
        let n = ((self.size - off) as usize).min(len);
        self.walk(off, off + n as u64, |at, piece| match piece {
            Piece::Written(bytes) => {
                out.extend_from_slice(bytes);
                Ok(())
            }
            Piece::Gap(len) => {
                let i = out.len();
                out.resize(i + len, 0);
                self.fill_gap(at, &mut out[i..])
            }
        })?;
        Ok(n)
    }
    /// A gap no pending write covers is zeros beyond the valid base, and where the base
    /// itself knows of zeros (a hole in an imported file).
    fn zeros_at(&self, off: u64) -> u64 {
        if off >= self.size {
            return 0;
        }
        if self.extent_at(off).is_some() {
            return 0;
        }
        let gap_end = self
            .extents
            .range((Excluded(off), Unbounded))
            .next()
            .map_or(self.size, |(s, _)| *s);
        if off < self.valid_base {
            let base_zeros_end = off + self.base.reader().zeros_at(off);
            if base_zeros_end < self.valid_base.min(gap_end) {
                return base_zeros_end - off;
            }
        }
        gap_end - off
    }
    fn len(&self) -> u64 {
        self.size
    }
}

struct PendingNode {
    version: NodeVersion,
    data: Option<PendingData>,
}

/// The store's writer: gathers one epoch of changes and commits it.
pub struct Recorder {
    store: Arc<Store>,
    session: SessionId,
    next_node: u64,
    dentries: BTreeMap<(NodeId, String), Dentry>,
    nodes: HashMap<NodeId, PendingNode>,
    changes: Vec<Change>,
    change_index: HashMap<(String, Op), usize>,
    pending_bytes: u64,
    last_time: i64,
    /// The system clock was found behind `last_time` and said so; cleared once it caught up.
    clock_behind: bool,
    settled: RefCell<Settled>,
}

/// Directory entries as of the head, remembered from lookups and commits. Resolving a path asks
/// the catalogue about each component (a range scan in sled), and the recorder resolves a path
/// for nearly every change it records: creating, writing, closing and removing one small file
/// asked about the same two entries a dozen times.
struct Settled {
    /// The head the entries are valid at: another writer moving the head empties the cache.
    head: Seq,
    /// `None`: no entry of that name.
    entries: lru::LruCache<(NodeId, String), Option<Dentry>>,
}

/// Entries the recorder remembers (about 100 bytes each).
const SETTLED_ENTRIES: usize = 4096;

impl Store {
    /// The writer of this store, recording as `session`. Only one may exist per store.
    pub fn recorder(self: &Arc<Self>, session: SessionId) -> Result<Recorder> {
        let next_node = self.stored_next_node()?.unwrap_or(NodeId::ROOT.0 + 1);
        let last_time = match self.epoch(self.head())? {
            Some(e) => e.time_ns,
            None => 0,
        };
        Ok(Recorder {
            store: Arc::clone(self),
            session,
            next_node,
            dentries: BTreeMap::new(),
            nodes: HashMap::new(),
            changes: Vec::new(),
            change_index: HashMap::new(),
            pending_bytes: 0,
            last_time,
            clock_behind: false,
            settled: RefCell::new(Settled {
                head: self.head(),
                entries: lru::LruCache::new(
                    std::num::NonZeroUsize::new(SETTLED_ENTRIES).expect("nonzero"),
                ),
            }),
        })
    }
}

impl Recorder {
    /// The store written to.
    pub fn store(&self) -> &Arc<Store> {
        &self.store
    }

    /// The session recorded as the author of changes.
    pub fn session(&self) -> SessionId {
        self.session
    }

    /// True when operations wait to be committed.
    pub fn has_pending(&self) -> bool {
        !self.changes.is_empty() || !self.nodes.is_empty() || !self.dentries.is_empty()
    }

    /// Bytes of written data held in memory for the next commit.
    pub fn pending_bytes(&self) -> u64 {
        self.pending_bytes
    }

    // ---- the tree as it is now: committed state with pending operations on top ----

    fn dentry_now(&self, parent: NodeId, name: &str) -> Result<Option<Dentry>> {
        let key = (parent, name.to_string());
        if let Some(d) = self.dentries.get(&key) {
            return Ok(Some(d.clone()));
        }
        let head = self.store.head();
        {
            let mut settled = self.settled.borrow_mut();
            if settled.head != head {
                settled.entries.clear();
                settled.head = head;
            }
            if let Some(d) = settled.entries.get(&key) {
                return Ok(d.clone());
            }
        }
        let d = self.store.dentry_at(parent, name, head)?.map(|(_, d)| d);
        self.settled.borrow_mut().entries.put(key, d.clone());
        Ok(d)
    }

    fn lookup(&self, parent: NodeId, name: &str) -> Result<Option<(NodeId, NodeKind)>> {
        Ok(self
            .dentry_now(parent, name)?
            .and_then(|d| d.node.map(|n| (n, d.kind))))
    }

    /// The node at `path` now, with its kind.
    pub fn resolve_now(&self, path: &RelPath) -> Result<Option<(NodeId, NodeKind)>> {
        let mut cur = (NodeId::ROOT, NodeKind::Dir);
        if path.is_root() {
            return Ok(Some(cur));
        }
        for comp in path.as_str().split('/') {
            if cur.1 != NodeKind::Dir {
                return Ok(None);
            }
            match self.lookup(cur.0, comp)? {
                Some(n) => cur = n,
                None => return Ok(None),
            }
        }
        Ok(Some(cur))
    }

    fn dir_node(&self, path: &RelPath) -> Result<NodeId> {
        match self.resolve_now(path)? {
            Some((n, NodeKind::Dir)) => Ok(n),
            Some(_) => Err(StoreError::WrongKind(format!("{path} is not a directory"))),
            None => Err(StoreError::NotFound(path.to_string())),
        }
    }

    fn parent_of<'p>(&self, path: &'p RelPath) -> Result<(NodeId, &'p str)> {
        let (parent, name) = path
            .split()
            .ok_or_else(|| StoreError::WrongKind("the root cannot be replaced".into()))?;
        Ok((self.dir_node(&parent)?, name))
    }

    /// The head's version of `node` (the root's default before anything was recorded in it).
    fn committed(&self, node: NodeId) -> Result<NodeVersion> {
        match self.store.node_at(node, self.store.head())? {
            Some((_, v)) => Ok(v),
            None if node == NodeId::ROOT => Ok(NodeVersion::new(
                NodeKind::Dir,
                Meta {
                    mode: 0o755,
                    ..Default::default()
                },
            )),
            None => Err(StoreError::CorruptCatalog {
                what: format!("node {}", node.0),
                detail: "named but never written".into(),
            }),
        }
    }

    fn node_now(&mut self, node: NodeId) -> Result<&mut PendingNode> {
        if !self.nodes.contains_key(&node) {
            let version = self.committed(node)?;
            self.nodes.insert(
                node,
                PendingNode {
                    version,
                    data: None,
                },
            );
        }
        Ok(self.nodes.get_mut(&node).expect("inserted"))
    }

    /// The version of `path` as it would be committed now (content not yet re-chunked).
    pub fn stat_now(&mut self, path: &RelPath) -> Result<Option<(NodeId, NodeVersion)>> {
        let Some((node, _)) = self.resolve_now(path)? else {
            return Ok(None);
        };
        // Read, not made pending: a pending node is written at the commit, and a version of
        // every file stat'ed (a mount's scan of the tree) would be versions nobody made.
        let Some(pn) = self.nodes.get(&node) else {
            return Ok(Some((node, self.committed(node)?)));
        };
        let mut v = pn.version.clone();
        if let Some(d) = &pn.data {
            v.content.size = d.size;
        }
        Ok(Some((node, v)))
    }

    fn children_now(&self, dir: NodeId) -> Result<Vec<(String, NodeId, NodeKind)>> {
        let mut names: BTreeMap<String, Option<(NodeId, NodeKind)>> = self
            .store
            .list_node(dir, self.store.head())?
            .into_iter()
            .map(|d| (d.name, Some((d.node, d.kind))))
            .collect();
        for ((_, name), d) in self
            .dentries
            .range((dir, String::new())..)
            .take_while(|((p, _), _)| *p == dir)
        {
            names.insert(name.clone(), d.node.map(|n| (n, d.kind)));
        }
        Ok(names
            .into_iter()
            .filter_map(|(name, v)| v.map(|(n, k)| (name, n, k)))
            .collect())
    }

    fn note(&mut self, path: &RelPath, op: Op, node: Option<NodeId>, other: Option<&RelPath>) {
        let key = (path.as_str().to_string(), op);
        if let Some(&i) = self.change_index.get(&key) {
            let c = &mut self.changes[i];
            c.node = node;
            c.other = other.map(|o| o.as_str().to_string());
            return;
        }
        self.change_index.insert(key, self.changes.len());
        self.changes.push(Change {
            path: path.as_str().to_string(),
            op,
            node,
            other: other.map(|o| o.as_str().to_string()),
            size: None,
        });
    }

    fn set_dentry(&mut self, parent: NodeId, name: &str, d: Dentry) {
        self.dentries.insert((parent, name.to_string()), d);
    }

    fn new_node(&mut self, version: NodeVersion) -> NodeId {
        let id = NodeId(self.next_node);
        self.next_node += 1;
        self.nodes.insert(
            id,
            PendingNode {
                version,
                data: None,
            },
        );
        id
    }

    // ---- operations ----

    /// A new empty file, directory or symlink (`target` for symlinks) at `path`, which must not
    /// exist yet.
    pub fn create(
        &mut self,
        path: &RelPath,
        kind: NodeKind,
        meta: Meta,
        target: &str,
    ) -> Result<NodeId> {
        let node = self.create_silently(path, kind, meta, target)?;
        self.note(path, Op::Create, Some(node), None);
        Ok(node)
    }

    fn create_silently(
        &mut self,
        path: &RelPath,
        kind: NodeKind,
        meta: Meta,
        target: &str,
    ) -> Result<NodeId> {
        let (parent, name) = self.parent_of(path)?;
        if self.lookup(parent, name)?.is_some() {
            return Err(StoreError::Exists(path.to_string()));
        }
        let mut v = NodeVersion::new(kind, meta);
        v.target = target.to_string();
        let node = self.new_node(v);
        self.set_dentry(
            parent,
            name,
            Dentry {
                node: Some(node),
                kind,
                op: Op::Create,
                other: None,
            },
        );
        Ok(node)
    }

    fn file_data(&mut self, path: &RelPath) -> Result<(NodeId, &mut PendingData)> {
        let (node, kind) = self
            .resolve_now(path)?
            .ok_or_else(|| StoreError::NotFound(path.to_string()))?;
        if kind != NodeKind::File {
            return Err(StoreError::WrongKind(format!("{path} is not a file")));
        }
        let chunks = Arc::clone(self.store.chunks());
        let pn = self.node_now(node)?;
        if pn.data.is_none() {
            let content = pn.version.content.clone();
            let size = content.size;
            pn.data = Some(PendingData {
                base: Base::Stored(ContentReader::new(chunks, content)),
                valid_base: size,
                size,
                extents: BTreeMap::new(),
            });
        }
        Ok((node, pn.data.as_mut().expect("set")))
    }

    /// `data` written at `offset` of the file at `path`.
    pub fn write(&mut self, path: &RelPath, offset: u64, data: &[u8]) -> Result<()> {
        self.write_cow(path, offset, Cow::Borrowed(data))
    }

    /// Like [`write`](Self::write), keeping `data` as the pending buffer instead of copying
    /// it: what the daemon does with the copy it already made of a FUSE write.
    pub fn write_owned(&mut self, path: &RelPath, offset: u64, data: Vec<u8>) -> Result<()> {
        self.write_cow(path, offset, Cow::Owned(data))
    }

    fn write_cow(&mut self, path: &RelPath, offset: u64, data: Cow<'_, [u8]>) -> Result<()> {
        let (node, d) = self.file_data(path)?;
        let before = d.extent_bytes();
        d.write(offset, data);
        let after = d.extent_bytes();
        self.pending_bytes = self.pending_bytes + after - before.min(after);
        self.nodes.get_mut(&node).expect("loaded").version.op = Op::Write;
        self.note(path, Op::Write, Some(node), None);
        Ok(())
    }

    /// The file at `path` cut or extended (with zeros) to `size`.
    pub fn truncate(&mut self, path: &RelPath, size: u64) -> Result<()> {
        let (node, d) = self.file_data(path)?;
        d.truncate(size);
        self.nodes.get_mut(&node).expect("loaded").version.op = Op::Truncate;
        self.note(path, Op::Truncate, Some(node), None);
        Ok(())
    }

    /// The whole content of the file at `path` replaced by what `source` holds (created if
    /// missing). Used on the first mount, for changes made while unmounted, for files renamed in
    /// from unversioned paths, and to heal a path the recorder lost track of.
    pub fn import(&mut self, path: &RelPath, meta: Meta, source: Arc<dyn ReadAt>) -> Result<()> {
        let node = match self.resolve_now(path)? {
            Some((n, NodeKind::File)) => n,
            Some(_) => {
                self.remove_any(path)?;
                self.create_silently(path, NodeKind::File, meta, "")?
            }
            None => self.create_silently(path, NodeKind::File, meta, "")?,
        };
        let size = source.len();
        let pn = self.node_now(node)?;
        pn.version.meta = meta;
        pn.version.op = Op::Import;
        pn.data = Some(PendingData {
            base: Base::External(source),
            valid_base: size,
            size,
            extents: BTreeMap::new(),
        });
        self.note(path, Op::Import, Some(node), None);
        Ok(())
    }

    /// Makes `path` hold exactly `version` (a rollback), as a new node like the temp file a
    /// restore renames into place; its content is shared, not copied.
    pub fn restore(&mut self, path: &RelPath, version: &NodeVersion, from: Seq) -> Result<()> {
        if self.resolve_now(path)?.is_some() {
            self.remove_any(path)?;
        }
        let (parent, name) = self.parent_of(path)?;
        let mut v = version.clone();
        v.op = Op::Restore;
        let kind = v.kind;
        let node = self.new_node(v);
        self.set_dentry(
            parent,
            name,
            Dentry {
                node: Some(node),
                kind,
                op: Op::Restore,
                other: Some(format!("#{from}")),
            },
        );
        self.note(path, Op::Restore, Some(node), None);
        // The change names the moment it came from, as its entry does.
        if let Some(&i) = self
            .change_index
            .get(&(path.as_str().to_string(), Op::Restore))
        {
            self.changes[i].other = Some(format!("#{from}"));
        }
        Ok(())
    }

    /// Removes whatever is at `path`; a directory with everything in it.
    pub fn remove_any(&mut self, path: &RelPath) -> Result<()> {
        match self.resolve_now(path)? {
            None => Err(StoreError::NotFound(path.to_string())),
            Some((node, NodeKind::Dir)) => {
                for (name, _, _) in self.children_now(node)? {
                    self.remove_any(&path.join(&name)?)?;
                }
                self.rmdir(path)
            }
            Some(_) => self.unlink(path),
        }
    }

    /// Attributes of `path` changed.
    pub fn set_meta(&mut self, path: &RelPath, u: MetaUpdate) -> Result<()> {
        let (node, _) = self
            .resolve_now(path)?
            .ok_or_else(|| StoreError::NotFound(path.to_string()))?;
        let was_pending = self.nodes.contains_key(&node);
        let pn = self.node_now(node)?;
        let m = &mut pn.version.meta;
        let before = *m;
        m.mode = u.mode.map(|x| x & 0o7777).unwrap_or(m.mode);
        m.uid = u.uid.unwrap_or(m.uid);
        m.gid = u.gid.unwrap_or(m.gid);
        m.mtime_ns = u.mtime_ns.unwrap_or(m.mtime_ns);
        if *m == before {
            if !was_pending {
                self.nodes.remove(&node);
            }
            return Ok(());
        }
        // Only permission and ownership changes are worth a line in the log; an mtime update
        // alone rides along with the write that caused it.
        if before.mode != m.mode || before.uid != m.uid || before.gid != m.gid {
            if pn.version.op != Op::Create {
                pn.version.op = Op::Attr;
            }
            self.note(path, Op::Attr, Some(node), None);
        }
        Ok(())
    }

    /// An extended attribute set (`Some`) or removed (`None`).
    pub fn set_xattr(&mut self, path: &RelPath, name: &[u8], value: Option<&[u8]>) -> Result<()> {
        let (node, _) = self
            .resolve_now(path)?
            .ok_or_else(|| StoreError::NotFound(path.to_string()))?;
        let pn = self.node_now(node)?;
        match value {
            Some(v) => pn.version.xattrs.insert(name.to_vec(), v.to_vec()),
            None => pn.version.xattrs.remove(name),
        };
        pn.version.op = Op::Xattr;
        self.note(path, Op::Xattr, Some(node), None);
        Ok(())
    }

    /// The extended attributes of `path` as a capture found them on the real file or directory,
    /// in place of the recorded ones. Part of a capture that creates or imports it; a change of
    /// its own otherwise.
    pub fn import_xattrs(
        &mut self,
        path: &RelPath,
        xattrs: BTreeMap<Vec<u8>, Vec<u8>>,
    ) -> Result<()> {
        let (node, _) = self
            .resolve_now(path)?
            .ok_or_else(|| StoreError::NotFound(path.to_string()))?;
        let pn = self.node_now(node)?;
        pn.version.xattrs = xattrs;
        if !matches!(pn.version.op, Op::Create | Op::Import) {
            pn.version.op = Op::Xattr;
            self.note(path, Op::Xattr, Some(node), None);
        }
        Ok(())
    }

    /// The non-directory at `path` unlinked.
    pub fn unlink(&mut self, path: &RelPath) -> Result<()> {
        let (parent, name) = self.parent_of(path)?;
        match self.lookup(parent, name)? {
            None => Err(StoreError::NotFound(path.to_string())),
            Some((_, NodeKind::Dir)) => {
                Err(StoreError::WrongKind(format!("{path} is a directory")))
            }
            Some((node, kind)) => {
                self.set_dentry(
                    parent,
                    name,
                    Dentry {
                        node: None,
                        kind,
                        op: Op::Delete,
                        other: None,
                    },
                );
                self.note(path, Op::Delete, Some(node), None);
                Ok(())
            }
        }
    }

    /// The empty directory at `path` removed.
    pub fn rmdir(&mut self, path: &RelPath) -> Result<()> {
        let (parent, name) = self.parent_of(path)?;
        match self.lookup(parent, name)? {
            None => Err(StoreError::NotFound(path.to_string())),
            Some((node, NodeKind::Dir)) => {
                if !self.children_now(node)?.is_empty() {
                    return Err(StoreError::NotEmpty(path.to_string()));
                }
                self.set_dentry(
                    parent,
                    name,
                    Dentry {
                        node: None,
                        kind: NodeKind::Dir,
                        op: Op::Delete,
                        other: None,
                    },
                );
                self.note(path, Op::Delete, Some(node), None);
                Ok(())
            }
            Some(_) => Err(StoreError::WrongKind(format!("{path} is not a directory"))),
        }
    }

    /// `from` renamed to `to`. A directory moves with everything in it, at O(1) cost.
    pub fn rename(&mut self, from: &RelPath, to: &RelPath, mode: RenameMode) -> Result<()> {
        let (fp, fname) = self.parent_of(from)?;
        let (tp, tname) = self.parent_of(to)?;
        let (fnode, fkind) = self
            .lookup(fp, fname)?
            .ok_or_else(|| StoreError::NotFound(from.to_string()))?;
        if from == to {
            return Ok(());
        }
        if fkind == NodeKind::Dir && to.starts_with(from) {
            return Err(StoreError::WrongKind(format!(
                "cannot move {from} into itself"
            )));
        }
        let existing = self.lookup(tp, tname)?;
        match (mode, existing) {
            (RenameMode::NoReplace, Some(_)) => return Err(StoreError::Exists(to.to_string())),
            (RenameMode::Exchange, None) => return Err(StoreError::NotFound(to.to_string())),
            (RenameMode::Exchange, Some((tnode, tkind))) => {
                self.set_dentry(
                    fp,
                    fname,
                    Dentry {
                        node: Some(tnode),
                        kind: tkind,
                        op: Op::RenameFrom,
                        other: Some(to.as_str().into()),
                    },
                );
                self.set_dentry(
                    tp,
                    tname,
                    Dentry {
                        node: Some(fnode),
                        kind: fkind,
                        op: Op::RenameFrom,
                        other: Some(from.as_str().into()),
                    },
                );
                self.note(from, Op::RenameFrom, Some(tnode), Some(to));
                self.note(to, Op::RenameFrom, Some(fnode), Some(from));
                return Ok(());
            }
            (_, Some((tnode, tkind))) => {
                if tnode == fnode {
                    // Renaming a hard link onto another link of the same file does nothing.
                    return Ok(());
                }
                match (fkind == NodeKind::Dir, tkind == NodeKind::Dir) {
                    (true, false) => {
                        return Err(StoreError::WrongKind(format!("{to} is not a directory")))
                    }
                    (false, true) => {
                        return Err(StoreError::WrongKind(format!("{to} is a directory")))
                    }
                    (true, true) if !self.children_now(tnode)?.is_empty() => {
                        return Err(StoreError::NotEmpty(to.to_string()))
                    }
                    _ => {}
                }
            }
            _ => {}
        }
        self.set_dentry(
            fp,
            fname,
            Dentry {
                node: None,
                kind: fkind,
                op: Op::RenameTo,
                other: Some(to.as_str().into()),
            },
        );
        self.set_dentry(
            tp,
            tname,
            Dentry {
                node: Some(fnode),
                kind: fkind,
                op: Op::RenameFrom,
                other: Some(from.as_str().into()),
            },
        );
        self.note(from, Op::RenameTo, Some(fnode), Some(to));
        self.note(to, Op::RenameFrom, Some(fnode), Some(from));
        self.touch(fnode, Op::RenameFrom)
    }

    /// Gives `node` a version in this epoch even if its content did not change, so that the
    /// path it now appears at has a version id of its own (that resolves to this moment).
    fn touch(&mut self, node: NodeId, op: Op) -> Result<()> {
        let pn = self.node_now(node)?;
        if pn.data.is_none() && pn.version.op != Op::Create {
            pn.version.op = op;
        }
        Ok(())
    }

    /// A hard link `to` made to the file at `from`.
    pub fn link(&mut self, from: &RelPath, to: &RelPath) -> Result<()> {
        let (fnode, fkind) = self
            .resolve_now(from)?
            .ok_or_else(|| StoreError::NotFound(from.to_string()))?;
        if fkind == NodeKind::Dir {
            return Err(StoreError::WrongKind(format!("{from} is a directory")));
        }
        let (tp, tname) = self.parent_of(to)?;
        if self.lookup(tp, tname)?.is_some() {
            return Err(StoreError::Exists(to.to_string()));
        }
        self.set_dentry(
            tp,
            tname,
            Dentry {
                node: Some(fnode),
                kind: fkind,
                op: Op::Link,
                other: Some(from.as_str().into()),
            },
        );
        self.note(to, Op::Link, Some(fnode), Some(from));
        self.touch(fnode, Op::Link)
    }

    /// Drops everything pending and everything remembered of the catalogue: after a failure
    /// that may have left either half-changed.
    pub fn reset(&mut self) {
        self.discard();
        let settled = self.settled.get_mut();
        settled.entries.clear();
        settled.head = self.store.head();
    }

    /// Forgets every pending operation (after a failed commit, the overlay re-imports).
    pub fn discard(&mut self) {
        self.dentries.clear();
        self.nodes.clear();
        self.changes.clear();
        self.change_index.clear();
        self.pending_bytes = 0;
    }

    /// Paths with pending content changes (what a failed commit leaves unversioned).
    pub fn pending_paths(&self) -> Vec<String> {
        self.changes.iter().map(|c| c.path.clone()).collect()
    }

    /// Commits every pending operation as one epoch. With `durable`, the epoch survives a power
    /// loss when this returns; without, it is visible at once and the next durable commit (or
    /// [`Store::flush`]) makes it survive a crash. Returns `None` when nothing was
    /// pending. On error nothing is committed and the pending operations are dropped: the
    /// caller decides what to re-import.
    pub fn commit(&mut self, durable: bool) -> Result<Option<Committed>> {
        if !self.has_pending() {
            if durable {
                self.store.flush()?;
            }
            return Ok(None);
        }
        let result = self.commit_inner(durable);
        self.discard();
        result.map(Some)
    }

    /// A clock set back (by hand, or by a first time sync after a wrong start) leaves new moments
    /// stamped with the last moment's time until it catches up, so a time such as "10 minutes
    /// ago", counted from the clock, names a moment before all of them. Said loudly, once per
    /// such stretch; a few seconds' step of a time sync is not worth a line.
    fn note_clock(&mut self, now: i64) {
        const SLACK_NS: i64 = 5_000_000_000;
        let behind = self.last_time.saturating_sub(now);
        if behind <= SLACK_NS {
            self.clock_behind = false;
        } else if !self.clock_behind {
            self.clock_behind = true;
            tracing::warn!(
                behind_s = behind / 1_000_000_000,
                "the system clock is behind the newest moment: new moments carry that moment's \
                 time until the clock catches up, and times given as \"ago\" count from the \
                 clock"
            );
        }
    }

    fn commit_inner(&mut self, durable: bool) -> Result<Committed> {
        let store = Arc::clone(&self.store);
        let before = store.head();
        let seq = before.next();
        // Times never go backwards, so "the moment at time T" is well defined.
        let now = now_ns();
        self.note_clock(now);
        let time_ns = now.max(self.last_time);
        let mut batch = Journaled::default();
        let (mut stored, mut hashed) = (0u64, 0u64);
        let mut sizes: HashMap<NodeId, u64> = HashMap::new();
        let nodes = std::mem::take(&mut self.nodes);
        for (node, pn) in nodes {
            let mut version = pn.version;
            if let Some(data) = pn.data {
                let mut head = vec![0u8; 100.min(data.size as usize)];
                data.read_at(0, &mut head)?;
                let base = match &data.base {
                    Base::Stored(r) => r.content().clone(),
                    Base::External(_) => Content::default(),
                };
                let (content, st) = rewrite(
                    store.chunks(),
                    &base,
                    &data,
                    data.size,
                    &data.dirty(),
                    Policy::for_file(&head),
                )?;
                stored += st.stored;
                hashed += st.hashed;
                version.content = content;
            }
            sizes.insert(node, version.size());
            batch.insert(schema::node_key(node, seq), encode(&version));
            batch.insert(
                schema::version_key(VersionId::new(node, seq)),
                schema::version_value(node, seq),
            );
        }
        let dentries = std::mem::take(&mut self.dentries);
        for ((parent, name), d) in &dentries {
            batch.insert(
                schema::dentry_key(&parent_key(*parent), name, seq),
                encode(d),
            );
        }
        let changes = std::mem::take(&mut self.changes);
        for (i, mut c) in changes.iter().cloned().enumerate() {
            if c.op != Op::Delete && c.op != Op::RenameTo {
                c.size = c.node.and_then(|n| sizes.get(&n).copied());
            }
            batch.insert(schema::change_key(seq, i as u32), encode(&c));
        }
        let epoch = Epoch {
            time_ns,
            session: self.session,
            changes: changes.len() as u32,
            stored_bytes: stored,
        };
        batch.insert(schema::epoch_key(seq), encode(&epoch));
        if durable {
            // Chunks first: no durable record may name a chunk that is not durable.
            store.packs().sync()?;
        }
        store.write_epoch(seq, batch, self.next_node)?;
        if durable {
            store.db.flush()?;
        }
        store.set_head(seq);
        if durable {
            store.persist_versions(seq);
        }
        self.last_time = time_ns;
        let settled = self.settled.get_mut();
        if settled.head == before {
            for (key, d) in dentries {
                settled.entries.put(key, Some(d));
            }
        } else {
            settled.entries.clear();
        }
        settled.head = seq;
        Ok(Committed {
            seq,
            stored_bytes: stored,
            hashed_bytes: hashed,
        })
    }
}

/// The records of one epoch, as the recorder made them ([`Store::write_epoch`] writes them).
#[derive(Default)]
pub(crate) struct Journaled {
    pub(crate) records: Vec<(Vec<u8>, Vec<u8>)>,
}

impl Journaled {
    pub(crate) fn insert(&mut self, key: impl AsRef<[u8]>, value: impl AsRef<[u8]>) {
        self.records
            .push((key.as_ref().to_vec(), value.as_ref().to_vec()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// With the clock an hour behind the newest moment, new moments carry that moment's time
    /// (times stay in order) and the recorder notes the stretch; once the clock is past it again,
    /// moments carry the clock's time and the note is cleared, so the next stretch is said too.
    #[test]
    fn a_clock_set_back_keeps_times_in_order_and_is_noted_once_per_stretch() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open_or_create(dir.path()).unwrap();
        let mut rec = store.recorder(SessionId(1)).unwrap();
        let commit = |rec: &mut Recorder, name: &str| {
            let path = RelPath::new(name).unwrap();
            rec.create(&path, NodeKind::File, Meta::default(), "")
                .unwrap();
            let seq = rec.commit(false).unwrap().unwrap().seq;
            store.epoch(seq).unwrap().unwrap().time_ns
        };
        let ahead = now_ns() + 3_600_000_000_000;
        rec.last_time = ahead;
        assert_eq!(commit(&mut rec, "a"), ahead);
        assert!(rec.clock_behind);
        assert_eq!(commit(&mut rec, "b"), ahead);
        assert!(rec.clock_behind);
        let now = now_ns();
        rec.last_time = now - 1;
        let caught_up = commit(&mut rec, "c");
        assert!(caught_up >= now && caught_up < ahead);
        assert!(!rec.clock_behind);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]
        /// Pending writes and truncations over a base read back, through `read_at` and
        /// `read_append`, as the same operations applied to a plain byte vector; and every run
        /// `zeros_at` vouches for is zeros (the base has none), and a gap a truncation opened
        /// is always vouched for.
        #[test]
        fn pending_data_reads_as_the_bytes_written(
            base_len in 0usize..3000,
            ops in proptest::collection::vec((any::<bool>(), 0u64..4000, 0usize..900, any::<u8>()), 0..12),
            reads in proptest::collection::vec((0u64..4500, 0usize..4500), 1..8),
        ) {
            let base: Vec<u8> = (0..base_len).map(|i| (i % 251) as u8 + 1).collect();
            let mut model = base.clone();
            let mut d = PendingData {
                base: Base::External(Arc::new(base)),
                valid_base: base_len as u64,
                size: base_len as u64,
                extents: BTreeMap::new(),
            };
            for (write, off, len, byte) in ops {
                if write {
                    // An empty write changes nothing, not even the size.
                    let end = off as usize + len;
                    if len > 0 {
                        model.resize(model.len().max(end), 0);
                        model[off as usize..end].fill(byte);
                    }
                    d.write(off, Cow::Owned(vec![byte; len]));
                } else {
                    model.resize(off as usize, 0);
                    d.truncate(off);
                }
            }
            prop_assert_eq!(d.len(), model.len() as u64);
            for (off, len) in reads {
                let want = model.get(off as usize..).map(|r| &r[..len.min(r.len())]).unwrap_or_default();
                let mut buf = vec![0xee; len];
                let n = d.read_at(off, &mut buf).unwrap();
                prop_assert_eq!(&buf[..n], want);
                let mut out = vec![7u8];
                let n = d.read_append(off, len, &mut out).unwrap();
                prop_assert_eq!(n, want.len());
                prop_assert_eq!(&out[1..], want);
                let z = d.zeros_at(off);
                prop_assert!(off + z <= d.len().max(off));
                if z > 0 {
                    prop_assert!(model[off as usize..(off + z) as usize].iter().all(|&b| b == 0));
                }
                if off >= d.valid_base && off < d.len() && d.extent_at(off).is_none() {
                    prop_assert!(z > 0, "the gap at {} is not vouched for", off);
                }
            }
        }
    }
}
