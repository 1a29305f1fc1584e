//! The history of one path: every version of whatever was at that path, and when it went away.
//!
//! A path's history is derived, not stored: the path is followed through the directory-entry
//! records of each of its components over time (so a directory renamed away and a new one created
//! under the old name are told apart), and for each stretch of time during which it named a node,
//! that node's versions are listed. A write through temp-file-and-rename therefore shows in the
//! history of the destination as a `rename-from` version.

use crate::ids::{NodeId, Seq, SessionId, VersionId};
use crate::relpath::RelPath;
use crate::store::catalog::{NodeKind, Op};
use crate::store::error::Result;
use crate::store::Store;

/// One version in a path's history.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct HistoryEntry {
    /// The epoch.
    pub seq: Seq,
    /// When, nanoseconds since the Unix epoch.
    pub time_ns: i64,
    /// The version (absent for a deletion).
    pub version: Option<VersionId>,
    /// How it came about.
    pub op: Op,
    /// Size after it (absent for a deletion).
    pub size: Option<u64>,
    /// What it was.
    pub kind: NodeKind,
    /// The other path of a rename or link.
    pub other: Option<String>,
    /// The session that made it.
    pub session: SessionId,
}

/// A stretch of epochs `[from, until)` during which a path named `node`.
struct Binding {
    from: Seq,
    until: Seq,
    node: Option<NodeId>,
    kind: NodeKind,
    op: Op,
    other: Option<String>,
}

impl Store {
    fn bindings(&self, path: &RelPath) -> Result<Vec<Binding>> {
        let Some((parent, name)) = path.split() else {
            return Ok(vec![Binding {
                from: Seq::ZERO,
                until: Seq(u64::MAX),
                node: Some(NodeId::ROOT),
                kind: NodeKind::Dir,
                op: Op::Create,
                other: None,
            }]);
        };
        let mut out = Vec::new();
        for pb in self.bindings(&parent)? {
            let Some(dir) = pb.node else { continue };
            let hist = self.dentry_history(dir, name)?;
            for (i, (s, d)) in hist.iter().enumerate() {
                let until = hist.get(i + 1).map(|(n, _)| *n).unwrap_or(Seq(u64::MAX));
                let (from, until) = ((*s).max(pb.from), until.min(pb.until));
                if from >= until {
                    continue;
                }
                out.push(Binding {
                    from,
                    until,
                    node: d.node,
                    kind: d.kind,
                    op: if from == *s { d.op } else { Op::Create },
                    other: d.other.clone(),
                });
            }
        }
        Ok(out)
    }

    /// Every version of what was at `path`, newest first; at most `limit` entries.
    pub fn history(&self, path: &RelPath, limit: usize) -> Result<Vec<HistoryEntry>> {
        let head = self.head();
        let mut out = Vec::new();
        for b in self.bindings(path)? {
            let top = Seq(b.until.0.saturating_sub(1)).min(head);
            match b.node {
                None => out.push((b.from, None, b.op, None, b.kind, b.other.clone())),
                Some(node) => {
                    for (vs, v) in self.node_versions(node, b.from, top)? {
                        let (op, other) = if vs == b.from {
                            (b.op, b.other.clone())
                        } else {
                            (v.op, None)
                        };
                        out.push((
                            vs,
                            Some(VersionId::new(node, vs)),
                            op,
                            Some(v.size()),
                            v.kind,
                            other,
                        ));
                    }
                    // Bound here from an older version (a rename or link of a file that did not
                    // change in that epoch): the binding itself is a version of this path.
                    if !out.iter().any(|e| e.0 == b.from) && b.from > Seq::ZERO {
                        if let Some((vs, v)) = self.node_at(node, b.from)? {
                            out.push((
                                b.from,
                                Some(VersionId::new(node, vs)),
                                b.op,
                                Some(v.size()),
                                v.kind,
                                b.other.clone(),
                            ));
                        }
                    }
                }
            }
        }
        out.sort_by_key(|e| std::cmp::Reverse(e.0));
        out.dedup_by_key(|e| e.0);
        out.truncate(limit);
        let mut entries = Vec::with_capacity(out.len());
        for (seq, version, op, size, kind, other) in out {
            let epoch = self.epoch(seq)?;
            entries.push(HistoryEntry {
                seq,
                time_ns: epoch.as_ref().map(|e| e.time_ns).unwrap_or(0),
                version,
                op: if version.is_none() && op != Op::RenameTo {
                    Op::Delete
                } else {
                    op
                },
                size,
                kind,
                other,
                session: epoch.map(|e| e.session).unwrap_or(SessionId(0)),
            });
        }
        Ok(entries)
    }

    /// [`Store::history`] of `path`, and through every rename that brought something to it:
    /// for each `rename-from` version, the history of the path it came from, before the rename
    /// (and so on back), each entry with the path it was at. Newest first; at most `limit`.
    pub fn history_followed(
        &self,
        path: &RelPath,
        limit: usize,
    ) -> Result<Vec<(RelPath, HistoryEntry)>> {
        /// Renames followed at most, so a history renamed back and forth stays bounded.
        const MAX_FOLLOWED: usize = 1000;
        let mut out: Vec<(RelPath, HistoryEntry)> = Vec::new();
        let mut seen = std::collections::HashSet::new();
        let mut todo = vec![(path.clone(), Seq(u64::MAX))];
        let mut followed = 0;
        // A path visited again (a file renamed back and forth) is read once.
        let mut read: std::collections::HashMap<RelPath, Vec<HistoryEntry>> = Default::default();
        while let Some((p, before)) = todo.pop() {
            if !read.contains_key(&p) {
                read.insert(p.clone(), self.history(&p, usize::MAX)?);
            }
            for e in read[&p].iter().cloned() {
                if e.seq >= before || !seen.insert((p.clone(), e.seq)) {
                    continue;
                }
                if e.op == Op::RenameFrom && followed < MAX_FOLLOWED {
                    if let Some(from) = e.other.as_deref().and_then(|o| RelPath::new(o).ok()) {
                        followed += 1;
                        todo.push((from, e.seq));
                    }
                }
                out.push((p.clone(), e));
            }
        }
        // A file renamed away and back: its departure from a path (`rename-to`) says no more
        // than its arrival at the other (`rename-from`), listed too.
        let arrivals: std::collections::HashSet<(String, Seq)> = out
            .iter()
            .filter(|(_, e)| e.op == Op::RenameFrom)
            .map(|(p, e)| (p.as_str().to_string(), e.seq))
            .collect();
        out.retain(|(_, e)| {
            e.op != Op::RenameTo
                || !e
                    .other
                    .as_ref()
                    .is_some_and(|o| arrivals.contains(&(o.clone(), e.seq)))
        });
        out.sort_by_key(|(_, e)| std::cmp::Reverse(e.seq));
        out.truncate(limit);
        Ok(out)
    }
}
