//! What the replicator reads out of a store and what a clone writes back in.
//!
//! An epoch's records are immutable once committed and its journal entry names them
//! ([`schema::JOURNAL`]), so "epochs a..=b" is an exact, finite set of key/value pairs. A clone
//! applies those sets in order to an empty store; [`check_record`] is the gate every received
//! record passes first, so a tampered-with-but-authentic or buggy log can never plant a path
//! with `..`, an absolute path, or a record outside its epoch range.

use crate::ids::{NodeId, Seq};
use crate::relpath::RelPath;
use crate::store::catalog::{decode, decode_epoch, encode, Change, Dentry, NodeVersion};
use crate::store::recorder::Journaled;
use crate::store::{schema, Result, Store, StoreError};

/// One catalogue record.
pub type Record = (Vec<u8>, Vec<u8>);

/// The records of one epoch.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct EpochRecords {
    /// The epoch.
    pub seq: Seq,
    /// Its records (the journal entry's keys with their values).
    pub records: Vec<Record>,
}

impl Store {
    /// The records epoch `seq` committed, or `None` if it was not committed.
    pub fn epoch_records(&self, seq: Seq) -> Result<Option<EpochRecords>> {
        let mut records = Vec::new();
        let keys: Vec<Vec<u8>> = if let Some(j) = self.cat.get(schema::journal_key(seq))? {
            decode(&j, || format!("journal of epoch {seq}"))?
        } else {
            // A compact epoch goes out in the same shape as any other: header, one record per
            // change, the rest.
            if seq > self.head() {
                return Ok(None);
            }
            let Some(h) = self.cat.get(schema::epoch_key(seq))? else {
                return Ok(None);
            };
            let (header, body) = decode_epoch(&h, seq)?;
            let body = body.ok_or_else(|| StoreError::CorruptCatalog {
                what: format!("epoch {seq}"),
                detail: "neither a journal entry nor a compact header".into(),
            })?;
            records.push((schema::epoch_key(seq).to_vec(), encode(&header)));
            for (i, c) in body.changes.into_iter().enumerate() {
                records.push((schema::change_key(seq, i as u32).to_vec(), c));
            }
            body.keys
        };
        for k in keys {
            let v = self
                .cat
                .get(&k)?
                .ok_or_else(|| StoreError::CorruptCatalog {
                    what: format!("epoch {seq}"),
                    detail: "a record its journal names is missing".into(),
                })?;
            if k.first() == Some(&schema::CHANGES) {
                // Stored many to a record, they travel one to a record.
                let first =
                    schema::change_key_index(&k).ok_or_else(|| StoreError::CorruptCatalog {
                        what: format!("epoch {seq}"),
                        detail: "malformed changes key".into(),
                    })?;
                let run: Vec<Vec<u8>> = decode(&v, || format!("changes of epoch {seq}"))?;
                for (i, c) in run.into_iter().enumerate() {
                    records.push((schema::change_key(seq, first + i as u32).to_vec(), c));
                }
                continue;
            }
            records.push((k, v.to_vec()));
        }
        // Version-id records travel with their epoch; since format 5 they are not stored in
        // the catalogue but follow from its node versions.
        let have: std::collections::HashSet<Vec<u8>> = records
            .iter()
            .filter(|(k, _)| k.first() == Some(&schema::VERSION))
            .map(|(k, _)| k.clone())
            .collect();
        let mut derived = Vec::new();
        for (k, _) in &records {
            if let (Some(node), Some(s)) = (schema::node_key_node(k), schema::node_key_seq(k)) {
                if k.first() == Some(&schema::NODE) {
                    let vk = schema::version_key(crate::ids::VersionId::new(node, s)).to_vec();
                    if !have.contains(&vk) {
                        derived.push((vk, schema::version_value(node, s).to_vec()));
                    }
                }
            }
        }
        records.extend(derived);
        records.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        Ok(Some(EpochRecords { seq, records }))
    }

    /// The next unused node id.
    pub fn next_node(&self) -> Result<u64> {
        Ok(self.stored_next_node()?.unwrap_or(1))
    }

    /// A sled tree beside the catalogue for replication state (cursors, uploaded chunk sets).
    /// Nothing in it is replicated.
    pub fn side_tree(&self, name: &str) -> Result<sled::Tree> {
        Ok(self.db.open_tree(format!("side:{name}"))?)
    }

    /// Applies epochs received from a remote, in order, to this store; they must come after
    /// its head, in increasing order (with gaps where the sender had pruned moments away before
    /// it pushed them). Each epoch goes in with its journal entry, as if recorded here. Every
    /// record is checked with [`check_record`] before anything is written.
    pub fn apply_epochs(&self, epochs: &[EpochRecords], next_node: u64) -> Result<()> {
        let mut after = self.head();
        for e in epochs {
            if e.seq <= after {
                return Err(StoreError::CorruptCatalog {
                    what: "received log".into(),
                    detail: format!("epoch {} arrives after epoch {after}", e.seq),
                });
            }
            for (k, v) in &e.records {
                check_record(e.seq, k, v)?;
            }
            after = e.seq;
        }
        let next_node = next_node.max(self.next_node()?);
        for e in epochs {
            let gap = e.seq.0 - self.head().0 - 1;
            if gap > 0 {
                // Counted as the epoch lands (a crash between the two can leave the count,
                // which only `status` shows, off by this gap).
                let gaps = self.gaps()? + gap;
                self.cat
                    .insert(schema::meta_key(schema::META_GAPS), &gaps.to_be_bytes())?;
            }
            let records = Journaled {
                records: e.records.clone(),
            };
            self.write_epoch(e.seq, records, next_node)?;
            self.set_head(e.seq);
        }
        Ok(())
    }
}

fn bad(seq: Seq, detail: String) -> StoreError {
    StoreError::CorruptCatalog {
        what: format!("received epoch {seq}"),
        detail,
    }
}

fn check_path(seq: Seq, p: &str) -> Result<()> {
    RelPath::new(p)
        .map(|_| ())
        .map_err(|e| bad(seq, format!("path {p:?}: {e}")))
}

/// The `other` of a change or entry: a path, or `#seq` for a restore.
fn check_other(seq: Seq, o: &str) -> Result<()> {
    match o.strip_prefix('#') {
        Some(n) if !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()) => Ok(()),
        _ => check_path(seq, o),
    }
}

fn check_name(seq: Seq, n: &str) -> Result<()> {
    if n.is_empty() || n == "." || n == ".." || n.contains('/') || n.contains('\0') {
        return Err(bad(seq, format!("entry name {n:?} is not a file name")));
    }
    Ok(())
}

/// Checks one received record of epoch `seq`: a kind an epoch writes, keyed by that epoch,
/// decoding as its kind, and naming only relative paths without `..`.
pub fn check_record(seq: Seq, k: &[u8], v: &[u8]) -> Result<()> {
    let wrong_seq = |found: Option<Seq>| {
        if found == Some(seq) {
            Ok(())
        } else {
            Err(bad(
                seq,
                format!("record for epoch {found:?} inside epoch {seq}"),
            ))
        }
    };
    match k.first().copied() {
        Some(schema::EPOCH) => {
            wrong_seq(schema::epoch_key_seq(k))?;
            // Epochs travel as a bare header; anything after it is refused here, not dropped
            // later.
            if decode_epoch(v, seq)?.1.is_some() {
                return Err(bad(seq, "an epoch header with a body".into()));
            }
        }
        Some(schema::CHANGE) => {
            wrong_seq(schema::epoch_key_seq(k))?;
            let c: Change = decode(v, || format!("change in epoch {seq}"))?;
            check_path(seq, &c.path)?;
            if let Some(o) = &c.other {
                check_other(seq, o)?;
            }
        }
        Some(schema::NODE) => {
            wrong_seq(schema::node_key_seq(k))?;
            let n: NodeVersion = decode(v, || format!("node in epoch {seq}"))?;
            let _ = n;
        }
        Some(schema::VERSION) => {
            if v.len() != 16 || u64::from_be_bytes(v[8..].try_into().expect("8")) != seq.0 {
                return Err(bad(seq, "version record of another epoch".into()));
            }
            let node = NodeId(u64::from_be_bytes(v[..8].try_into().expect("8")));
            if schema::version_key(crate::ids::VersionId::new(node, seq)).as_slice() != k {
                return Err(bad(seq, "version id does not match its node".into()));
            }
        }
        Some(schema::TIME) => wrong_seq(schema::time_key_seq(k))?,
        Some(schema::DENTRY) => {
            let parent_end = k[1..]
                .iter()
                .position(|b| *b == 0)
                .ok_or_else(|| bad(seq, "dentry key without a parent".into()))?;
            let (name, s) = schema::dentry_key_parts(k, parent_end + 2)
                .ok_or_else(|| bad(seq, "malformed dentry key".into()))?;
            wrong_seq(Some(s))?;
            check_name(seq, name)?;
            let d: Dentry = decode(v, || format!("entry in epoch {seq}"))?;
            if let Some(o) = &d.other {
                check_other(seq, o)?;
            }
        }
        other => {
            return Err(bad(
                seq,
                format!(
                    "record of kind {:?} cannot come from a log",
                    other.map(char::from)
                ),
            ))
        }
    }
    Ok(())
}
