//! What a repository on a remote holds.
//!
//! # Data format
//! ```text
//! config                          RepoConfig as JSON: the only object readable without the key
//! packs/<keyed id>                sealed( record* )            chunk records, exactly as in
//!                                                              local packs (compressed, CRC'd)
//! index/<keyed id>                sealed( zstd(bincode(Index)) )   where each chunk of the packs
//!                                                              of one push sits
//! log/<device>/<from>-<to>        sealed( zstd(bincode(LogSegment)) )   epochs from..=to of one
//!                                                              device (16 hex digits each)
//! marks/<device>                  sealed( zstd(bincode(DeviceState)) )   that device's marks and
//!                                                              sessions, replaced on change
//! ```
//! Keyed ids are HMAC-SHA256 under the name key of the object's plaintext hash
//! ([`crate::crypto::Keys::keyed_id`]), so a re-upload after a crash writes the same name.
//! Every sealed object is bound to its name (see [`crate::crypto`]).
//!
//! Order of writes, which keeps the remote readable at every instant: a push uploads its packs,
//! then its index, then the log segment that names the index; a restore reads only what log
//! segments name, so a pack or index without its segment (a push cut short) is simply unused.
//!
//! A device's log is read as a [`chain`] from epoch 1, taking at each step the segment that
//! reaches furthest; a thinning (`crate::replicate::thin`) writes a rewritten log beside the
//! old one that way, then deletes the old one.

use serde::{Deserialize, Serialize};

use crate::ids::{ChunkId, Seq};
use crate::store::catalog::{Mark, SessionInfo};
use crate::store::replica::EpochRecords;

/// Name of the config object.
pub const CONFIG: &str = "config";

/// Name of a pack object.
pub fn pack_name(keyed_id: &str) -> String {
    format!("packs/{keyed_id}")
}

/// Name of an index object.
pub fn index_name(keyed_id: &str) -> String {
    format!("index/{keyed_id}")
}

/// Prefix of a device's log segments.
pub fn log_prefix(device: &str) -> String {
    format!("log/{device}/")
}

/// Name of a log segment.
pub fn log_name(device: &str, from: Seq, to: Seq) -> String {
    format!("log/{device}/{:016x}-{:016x}", from.0, to.0)
}

/// Parses a log segment name into (device, from, to).
pub fn parse_log_name(name: &str) -> Option<(String, Seq, Seq)> {
    let rest = name.strip_prefix("log/")?;
    let (device, range) = rest.split_once('/')?;
    let (a, b) = range.split_once('-')?;
    if a.len() != 16 || b.len() != 16 {
        return None;
    }
    let from = u64::from_str_radix(a, 16).ok()?;
    let to = u64::from_str_radix(b, 16).ok()?;
    (from >= 1 && from <= to).then(|| (device.to_string(), Seq(from), Seq(to)))
}

/// A device's log from its segments (from, to, name), sorted: from epoch 1, at each step the
/// segment that starts where the log has got to and reaches furthest. A thinned log
/// (`crate::replicate::thin`) is written beside the one it replaces, its first segment
/// reaching further than the old one's and none of its others starting where an old one does,
/// so until the old segments are deleted the log is wholly the old one or wholly the new one.
/// Where no segment starts at the next epoch, the next one there is is taken, so that the
/// reader reports the gap.
pub fn chain<T: Clone>(segs: Vec<(Seq, Seq, T)>) -> Vec<(Seq, Seq, T)> {
    let mut out: Vec<(Seq, Seq, T)> = Vec::new();
    let mut expect = Seq(1);
    loop {
        let next = segs
            .iter()
            .filter(|s| s.0 == expect)
            .max_by_key(|s| s.1)
            .or_else(|| segs.iter().find(|s| s.0 > expect));
        match next {
            Some(s) => {
                expect = s.1.next();
                out.push(s.clone());
            }
            None => return out,
        }
    }
}

/// Checks that a device's log, as [`chain`] reads it, starts at epoch 1 and has no gap.
pub fn check_chain<T: AsRef<str>>(
    device: &str,
    segs: &[(Seq, Seq, T)],
) -> crate::replicate::Result<()> {
    let mut expect = Seq(1);
    for (from, to, name) in segs {
        if *from != expect {
            return Err(crate::replicate::ReplicaError::BadObject(format!(
                "the log of device {device} has a gap before {} (expected epoch {expect})",
                name.as_ref()
            )));
        }
        expect = to.next();
    }
    Ok(())
}

/// Name of a device's marks object.
pub fn marks_name(device: &str) -> String {
    format!("marks/{device}")
}

/// Where one chunk sits in a pack object.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct IndexEntry {
    /// The chunk.
    pub id: ChunkId,
    /// Offset of its record in the pack's plaintext.
    pub offset: u32,
    /// Length of its record.
    pub len: u32,
}

/// The packs one push uploaded and what they hold.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Index {
    /// (pack object name, its records).
    pub packs: Vec<(String, Vec<IndexEntry>)>,
}

/// Epochs `from..=to` of one device.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogSegment {
    /// The repository it belongs to (checked against `config`).
    pub repo_id: String,
    /// The device that recorded them.
    pub device: String,
    /// First epoch.
    pub from: Seq,
    /// Last epoch.
    pub to: Seq,
    /// When it was pushed (ns since the Unix epoch).
    pub pushed_ns: i64,
    /// The device's next unused node id at that time.
    pub next_node: u64,
    /// Index objects that locate the chunks these epochs (and earlier ones) use.
    pub indexes: Vec<String>,
    /// The epochs.
    pub epochs: Vec<EpochRecords>,
}

/// A device's marks and sessions.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceState {
    /// The device.
    pub device: String,
    /// The newest epoch pushed when this was written.
    pub head: Seq,
    /// When it was written.
    pub pushed_ns: i64,
    /// Named marks and safety marks.
    pub marks: Vec<Mark>,
    /// Mount sessions and CLI runs.
    pub sessions: Vec<SessionInfo>,
}

/// Encodes a structured object's plaintext.
pub fn pack_struct<T: Serialize>(v: &T) -> Vec<u8> {
    let raw = bincode::serialize(v).expect("encodes");
    zstd::bulk::compress(&raw, 3).expect("zstd compresses")
}

/// Decodes a structured object's plaintext.
pub fn unpack_struct<T: serde::de::DeserializeOwned>(
    name: &str,
    bytes: &[u8],
) -> Result<T, String> {
    let raw = zstd::stream::decode_all(bytes).map_err(|e| format!("{name}: {e}"))?;
    bincode::deserialize(&raw).map_err(|e| format!("{name}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_names_round_trip_and_reject_junk() {
        let n = log_name("ab12", Seq(3), Seq(70000));
        assert_eq!(
            parse_log_name(&n),
            Some(("ab12".into(), Seq(3), Seq(70000)))
        );
        assert_eq!(parse_log_name("log/ab12/zz-00"), None);
        assert_eq!(
            parse_log_name(&log_name("d", Seq(9), Seq(3))),
            None,
            "from after to"
        );
        assert_eq!(parse_log_name("packs/x"), None);
    }

    #[test]
    fn the_log_follows_the_segment_reaching_furthest() {
        let s = |a: u64, b: u64| (Seq(a), Seq(b), format!("{a}-{b}"));
        let names = |segs: Vec<(Seq, Seq, String)>| -> Vec<String> {
            chain(segs).into_iter().map(|x| x.2).collect()
        };
        // An old log, and a thinned one beside it whose first segment is not there yet.
        let old = vec![s(1, 10), s(11, 20), s(21, 30)];
        let mut both = old.clone();
        both.push(s(16, 30));
        both.sort();
        assert_eq!(names(both.clone()), ["1-10", "11-20", "21-30"]);
        // Its first segment lands: the log is the thinned one, then what was pushed after.
        both.push(s(1, 15));
        both.push(s(31, 40));
        both.sort();
        assert_eq!(names(both), ["1-15", "16-30", "31-40"]);
        // A gap is left for the reader to see.
        assert_eq!(names(vec![s(1, 10), s(12, 20)]), ["1-10", "12-20"]);
        assert!(chain::<String>(vec![]).is_empty());
    }
}
