//! Reading the tree as of any committed moment.
//!
//! Every lookup is a seek in sled: the newest record at or before the moment is the first one a
//! forward scan from `(key, !seq)` meets (see `schema.rs`). Nothing is loaded that is not asked
//! for, so reading one file among 100,000 versions, or listing one directory, costs the same
//! however long the history.

use std::sync::Arc;

use crate::ids::{NodeId, Seq, SessionId, VersionId};
use crate::relpath::RelPath;
use crate::store::catalog::{decode, Change, Dentry, Epoch, NodeKind, NodeVersion, SessionInfo};
use crate::store::content::ContentReader;
use crate::store::error::{Result, StoreError};
use crate::store::schema;
use crate::store::Store;

/// A path resolved at a moment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    /// The node the path names.
    pub node: NodeId,
    /// Its version at that moment.
    pub version: NodeVersion,
    /// The epoch that wrote that version.
    pub version_seq: Seq,
}

impl Entry {
    /// The version's id.
    pub fn version_id(&self) -> VersionId {
        VersionId::new(self.node, self.version_seq)
    }
}

/// One name in a directory listing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DirEntry {
    /// The name.
    pub name: String,
    /// What it names.
    pub node: NodeId,
    /// Its kind.
    pub kind: NodeKind,
}

impl Store {
    fn check_moment(&self, seq: Seq) -> Result<()> {
        if seq > self.head() {
            return Err(StoreError::NoSuchMoment(format!(
                "moment {seq} is not recorded yet (newest is {})",
                self.head()
            )));
        }
        Ok(())
    }

    /// The newest version of `node` at or before `seq`, with the epoch that wrote it.
    pub fn node_at(&self, node: NodeId, seq: Seq) -> Result<Option<(Seq, NodeVersion)>> {
        let prefix = schema::node_prefix(node);
        if let Some(kv) = self.cat.range(schema::node_key(node, seq)..).next() {
            let (k, v) = kv?;
            if k.starts_with(&prefix) {
                let vs = schema::node_key_seq(&k).expect("prefix checked");
                let ver = decode(&v, || format!("node {} at {vs}", node.0))?;
                return Ok(Some((vs, ver)));
            }
        }
        Ok(None)
    }

    /// Every version of `node`, newest first, with seqs in `[from, to]`.
    pub fn node_versions(
        &self,
        node: NodeId,
        from: Seq,
        to: Seq,
    ) -> Result<Vec<(Seq, NodeVersion)>> {
        let mut out = Vec::new();
        let end = schema::node_key(node, from);
        for kv in self.cat.range(schema::node_key(node, to)..=end) {
            let (k, v) = kv?;
            let vs = schema::node_key_seq(&k).expect("in range");
            out.push((vs, decode(&v, || format!("node {} at {vs}", node.0))?));
        }
        Ok(out)
    }

    /// What `name` in directory `parent` pointed at as of `seq`, with the epoch that set it.
    pub fn dentry_at(&self, parent: NodeId, name: &str, seq: Seq) -> Result<Option<(Seq, Dentry)>> {
        let pk = parent_key(parent);
        let prefix = schema::dentry_prefix(&pk, name);
        if let Some(kv) = self.cat.range(schema::dentry_key(&pk, name, seq)..).next() {
            let (k, v) = kv?;
            if k.starts_with(&prefix) {
                let (_, ds) = schema::dentry_key_parts(&k, prefix.len() - name.len() - 1)
                    .ok_or_else(|| StoreError::CorruptCatalog {
                        what: format!("directory entry {name}"),
                        detail: "bad key".into(),
                    })?;
                return Ok(Some((
                    ds,
                    decode(&v, || format!("directory entry {name}"))?,
                )));
            }
        }
        Ok(None)
    }

    /// Every setting of `name` in `parent`, oldest first.
    pub fn dentry_history(&self, parent: NodeId, name: &str) -> Result<Vec<(Seq, Dentry)>> {
        let pk = parent_key(parent);
        let prefix = schema::dentry_prefix(&pk, name);
        let head = self.head();
        let mut out = Vec::new();
        for kv in self.cat.scan_prefix(&prefix) {
            let (k, v) = kv?;
            let Some((_, s)) = schema::dentry_key_parts(&k, prefix.len() - name.len() - 1) else {
                continue;
            };
            if s <= head {
                out.push((s, decode(&v, || format!("directory entry {name}"))?));
            }
        }
        out.reverse();
        Ok(out)
    }

    /// The node at `path` as of `seq`, if the path existed then.
    pub fn resolve(&self, path: &RelPath, seq: Seq) -> Result<Option<NodeId>> {
        self.check_moment(seq)?;
        let mut node = NodeId::ROOT;
        if path.is_root() {
            return Ok(Some(node));
        }
        for comp in path.as_str().split('/') {
            match self.dentry_at(node, comp, seq)? {
                Some((_, Dentry { node: Some(n), .. })) => node = n,
                _ => return Ok(None),
            }
        }
        Ok(Some(node))
    }

    /// `path` as of `seq`: its node and that node's version then.
    pub fn stat(&self, path: &RelPath, seq: Seq) -> Result<Option<Entry>> {
        let Some(node) = self.resolve(path, seq)? else {
            return Ok(None);
        };
        match self.node_at(node, seq)? {
            Some((version_seq, version)) => Ok(Some(Entry {
                node,
                version,
                version_seq,
            })),
            None if node == NodeId::ROOT => Ok(Some(Entry {
                node,
                version: NodeVersion::new(
                    NodeKind::Dir,
                    crate::store::catalog::Meta {
                        mode: 0o755,
                        ..Default::default()
                    },
                ),
                version_seq: Seq::ZERO,
            })),
            None => Err(StoreError::CorruptCatalog {
                what: format!("{path}"),
                detail: "directory entry names a node with no version".into(),
            }),
        }
    }

    /// The names in directory `dir` (a node) as of `seq`, sorted by name.
    pub fn list_node(&self, dir: NodeId, seq: Seq) -> Result<Vec<DirEntry>> {
        let pk = parent_key(dir);
        let prefix = schema::dir_prefix(&pk);
        let mut out: Vec<DirEntry> = Vec::new();
        let mut last_name: Option<String> = None;
        for kv in self.cat.scan_prefix(&prefix) {
            let (k, v) = kv?;
            let Some((name, s)) = schema::dentry_key_parts(&k, prefix.len()) else {
                return Err(StoreError::CorruptCatalog {
                    what: "directory entry".into(),
                    detail: "bad key".into(),
                });
            };
            // Versions of a name come newest first; take the first at or before `seq`.
            if s > seq || last_name.as_deref() == Some(name) {
                continue;
            }
            last_name = Some(name.to_string());
            let d: Dentry = decode(&v, || format!("directory entry {name}"))?;
            if let Some(node) = d.node {
                out.push(DirEntry {
                    name: name.to_string(),
                    node,
                    kind: d.kind,
                });
            }
        }
        Ok(out)
    }

    /// The names in directory `path` as of `seq`.
    pub fn list(&self, path: &RelPath, seq: Seq) -> Result<Vec<DirEntry>> {
        let node = self
            .resolve(path, seq)?
            .ok_or_else(|| StoreError::NotFound(format!("{path} at moment {seq}")))?;
        self.list_node(node, seq)
    }

    /// A random-access reader of the file at `path` as of `seq`.
    pub fn open_file(&self, path: &RelPath, seq: Seq) -> Result<ContentReader> {
        let e = self
            .stat(path, seq)?
            .ok_or_else(|| StoreError::NotFound(format!("{path} at moment {seq}")))?;
        if e.version.kind != NodeKind::File {
            return Err(StoreError::WrongKind(format!("{path} is not a file")));
        }
        Ok(self.reader(e.version.content))
    }

    /// A random-access reader of some content.
    pub fn reader(&self, content: crate::store::content::Content) -> ContentReader {
        ContentReader::new(Arc::clone(&self.chunks), content)
    }

    /// Reads a whole file as of `seq` into memory (for small files and tests).
    pub fn read_file(&self, path: &RelPath, seq: Seq) -> Result<Vec<u8>> {
        use crate::store::content::ReadAt;
        let r = self.open_file(path, seq)?;
        let mut buf = vec![0u8; r.len() as usize];
        let n = r.read_at(0, &mut buf)?;
        buf.truncate(n);
        Ok(buf)
    }

    /// An epoch's header.
    pub fn epoch(&self, seq: Seq) -> Result<Option<Epoch>> {
        if seq > self.head() {
            return Ok(None);
        }
        self.cat
            .get(schema::epoch_key(seq))?
            .map(|v| decode(&v, || format!("epoch {seq}")))
            .transpose()
    }

    /// Epochs with seq in `[from, to]`, newest first.
    pub fn epochs_rev(
        &self,
        from: Seq,
        to: Seq,
    ) -> impl Iterator<Item = Result<(Seq, Epoch)>> + '_ {
        self.epoch_range(from, to).rev().map(epoch_entry)
    }

    /// The oldest moment: #1, unless a prune folded it away.
    pub fn first_moment(&self) -> Result<Option<(Seq, Epoch)>> {
        self.epochs_from(Seq(1), self.head()).next().transpose()
    }

    /// Epochs with seq in `[from, to]`, oldest first.
    pub fn epochs_from(
        &self,
        from: Seq,
        to: Seq,
    ) -> impl Iterator<Item = Result<(Seq, Epoch)>> + '_ {
        self.epoch_range(from, to).map(epoch_entry)
    }

    fn epoch_range(&self, from: Seq, to: Seq) -> sled::Iter {
        let to = to.min(self.head());
        self.cat
            .range(schema::epoch_key(from)..=schema::epoch_key(to))
    }

    /// The changes an epoch carries.
    pub fn changes(&self, seq: Seq) -> Result<Vec<Change>> {
        if let Some(h) = self.cat.get(schema::epoch_key(seq))? {
            if let (_, Some(body)) = crate::store::catalog::decode_epoch(&h, seq)? {
                return body
                    .changes
                    .iter()
                    .map(|c| decode(c, || format!("change of epoch {seq}")))
                    .collect();
            }
        }
        let mut out = Vec::new();
        for kv in self.cat.scan_prefix(schema::changes_prefix(seq)) {
            let (_, v) = kv?;
            let run: Vec<Vec<u8>> = decode(&v, || format!("changes of epoch {seq}"))?;
            for c in run {
                out.push(decode(&c, || format!("change of epoch {seq}"))?);
            }
        }
        // Epochs written before format 5: a record per change.
        for kv in self.cat.scan_prefix(schema::change_prefix(seq)) {
            let (_, v) = kv?;
            out.push(decode(&v, || format!("change of epoch {seq}"))?);
        }
        Ok(out)
    }

    /// The newest epoch committed at or before `time_ns`.
    ///
    /// Epochs are numbered up to the head (with gaps where a prune folded moments away) and
    /// their times never go backwards (a recorder starts from the head's time), so this is a
    /// binary search over the epoch headers: about 20 seeks among a million epochs, and no
    /// index to write per epoch.
    pub fn seq_at_time(&self, time_ns: i64) -> Result<Option<Seq>> {
        let (mut lo, mut hi) = (1u64, self.head().0);
        let mut found = None;
        while lo <= hi {
            let mid = lo + (hi - lo) / 2;
            // The first epoch at or after `mid` (within the range): a gap is skipped.
            let Some((seq, epoch)) = self.epochs_from(Seq(mid), Seq(hi)).next().transpose()? else {
                hi = mid - 1;
                continue;
            };
            if epoch.time_ns <= time_ns {
                found = Some(seq);
                lo = seq.0 + 1;
            } else {
                hi = mid - 1;
            }
        }
        Ok(found)
    }

    /// The node and epoch a version id names.
    /// A version a prune removed names nothing; one it moved to a later moment (the content
    /// kept, its own moment folded away) is found where it went.
    pub fn version(&self, v: VersionId) -> Result<Option<(NodeId, Seq)>> {
        let found = match self.versions.get(v)? {
            Some(found) => Some(found),
            None => self.catalogued_version(v)?,
        };
        let Some(mut at) = found else {
            return Ok(None);
        };
        // A prune that moves a version leaves a record under its id naming where it went;
        // a later prune may move it again.
        for _ in 0..64 {
            if at.1 <= self.head() && self.cat.contains_key(schema::node_key(at.0, at.1))? {
                return Ok(Some(at));
            }
            match self.catalogued_version(VersionId::new(at.0, at.1))? {
                Some(next) if next != at => at = next,
                _ => return Ok(None),
            }
        }
        Ok(None)
    }

    /// A version-id record of the catalogue: epochs written before format 5 keep theirs
    /// there, and a prune notes there where it moved a version (see `prune.rs`).
    fn catalogued_version(&self, v: VersionId) -> Result<Option<(NodeId, Seq)>> {
        match self.cat.get(schema::version_key(v))? {
            None => Ok(None),
            Some(b) if b.len() == 16 => {
                let node = NodeId(u64::from_be_bytes(b[..8].try_into().expect("8")));
                let seq = Seq(u64::from_be_bytes(b[8..].try_into().expect("8")));
                Ok(Some((node, seq)))
            }
            Some(_) => Err(StoreError::CorruptCatalog {
                what: format!("version {v}"),
                detail: "bad length".into(),
            }),
        }
    }

    /// A session's record.
    pub fn session(&self, id: SessionId) -> Result<Option<SessionInfo>> {
        self.cat
            .get(schema::session_key(id))?
            .map(|v| decode(&v, || format!("session {id}")))
            .transpose()
    }

    /// Every session, oldest first.
    pub fn sessions(&self) -> Result<Vec<SessionInfo>> {
        let mut out = Vec::new();
        for kv in self.cat.scan_prefix([schema::SESSION]) {
            let (_, v) = kv?;
            out.push(decode::<SessionInfo>(&v, || "session".into())?);
        }
        out.sort_by_key(|s| s.started_ns);
        Ok(out)
    }

    /// Records a session's start or end.
    pub fn put_session(&self, s: &SessionInfo) -> Result<()> {
        self.cat
            .insert(schema::session_key(s.id), crate::store::catalog::encode(s))?;
        Ok(())
    }

    /// Calls `f` with the content of every node version the catalogue holds, at any moment.
    pub fn each_content(
        &self,
        mut f: impl FnMut(&crate::store::content::Content) -> Result<()>,
    ) -> Result<()> {
        for kv in self.cat.scan_prefix([schema::NODE]) {
            let (k, v) = kv?;
            let nv: NodeVersion = decode(&v, || {
                format!(
                    "node version {:?}",
                    schema::node_key_node(&k).unwrap_or(NodeId(0))
                )
            })?;
            f(&nv.content)?;
        }
        Ok(())
    }

    /// Every path in the tree below `root` (inclusive) as of `seq`, parents before children.
    pub fn walk(&self, root: &RelPath, seq: Seq) -> Result<Vec<(RelPath, Entry)>> {
        let mut out = Vec::new();
        let Some(top) = self.stat(root, seq)? else {
            return Ok(out);
        };
        let mut stack = vec![(root.clone(), top)];
        while let Some((path, entry)) = stack.pop() {
            if entry.version.kind == NodeKind::Dir {
                let mut kids = Vec::new();
                for d in self.list_node(entry.node, seq)? {
                    let p = path.join(&d.name)?;
                    let (vs, v) =
                        self.node_at(d.node, seq)?
                            .ok_or_else(|| StoreError::CorruptCatalog {
                                what: p.to_string(),
                                detail: "directory entry names a node with no version".into(),
                            })?;
                    kids.push((
                        p,
                        Entry {
                            node: d.node,
                            version: v,
                            version_seq: vs,
                        },
                    ));
                }
                kids.reverse();
                stack.extend(kids);
            }
            out.push((path, entry));
        }
        Ok(out)
    }
}

/// An epoch header record from a range scan.
fn epoch_entry(kv: sled::Result<(sled::IVec, sled::IVec)>) -> Result<(Seq, Epoch)> {
    let (k, v) = kv?;
    let seq = schema::epoch_key_seq(&k).ok_or_else(|| StoreError::CorruptCatalog {
        what: "epoch key".into(),
        detail: "bad length".into(),
    })?;
    Ok((seq, decode(&v, || format!("epoch {seq}"))?))
}

/// Directory entries are keyed by their parent's node id, written as 16 hex digits (so that the
/// key encoding in `schema.rs` stays one of text parents and names).
pub(crate) fn parent_key(node: NodeId) -> String {
    format!("{:016x}", node.0)
}
