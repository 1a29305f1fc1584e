//! Newtypes for every identifier that crosses a module border.
//!
//! Each has a stable textual form (`Display`/`FromStr`) because ids are shown to users and typed
//! back in (`clawfs cat FILE --at 1042`, `--at 3fa9c2e1b0d4`).

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// SHA-256 of a chunk's plaintext: the name of a chunk everywhere, locally and (keyed) remotely.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ChunkId(pub [u8; 32]);

impl ChunkId {
    /// The id of `data`.
    pub fn of(data: &[u8]) -> ChunkId {
        ChunkId(Sha256::digest(data).into())
    }
}

impl fmt::Display for ChunkId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl fmt::Debug for ChunkId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ChunkId({})", &hex::encode(self.0)[..12])
    }
}

impl FromStr for ChunkId {
    type Err = IdParseError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut out = [0u8; 32];
        hex::decode_to_slice(s, &mut out).map_err(|_| IdParseError("chunk id", s.to_string()))?;
        Ok(ChunkId(out))
    }
}

/// A string that is not the textual form of the id it was meant to be.
#[derive(Debug, thiserror::Error)]
#[error("not a valid {0}: {1:?}")]
pub struct IdParseError(pub &'static str, pub String);

/// The sequence number of an epoch: one committed, crash-consistent moment of the whole tree.
/// Increases with time; `Seq(0)` is "before anything was recorded".
#[derive(
    Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default, Debug, Serialize, Deserialize,
)]
pub struct Seq(pub u64);

impl Seq {
    /// The moment before the first epoch.
    pub const ZERO: Seq = Seq(0);
    /// The epoch after this one.
    pub fn next(self) -> Seq {
        Seq(self.0 + 1)
    }
}

impl fmt::Display for Seq {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl FromStr for Seq {
    type Err = IdParseError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        s.trim_start_matches('#')
            .parse()
            .map(Seq)
            .map_err(|_| IdParseError("sequence number", s.to_string()))
    }
}

/// Identity of a file, directory or symlink in the store: what an inode is to a filesystem.
/// Hard links share one; a rename keeps it.
#[derive(
    Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default, Debug, Serialize, Deserialize,
)]
pub struct NodeId(pub u64);

impl NodeId {
    /// The root directory of the tree.
    pub const ROOT: NodeId = NodeId(1);
}

/// Names one version of one node: stable, short, shown by `history` and accepted as a moment.
/// It is derived from the node and the epoch (so it needs no counter), shown as 12 hex digits.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct VersionId(pub u64);

impl VersionId {
    /// The version of `node` written in epoch `seq`.
    pub fn new(node: NodeId, seq: Seq) -> VersionId {
        let mut h = Sha256::new();
        h.update(b"clawfs-version");
        h.update(node.0.to_be_bytes());
        h.update(seq.0.to_be_bytes());
        let d = h.finalize();
        // 48 bits: collisions are checked at lookup, and a prefix is what people type anyway.
        let mut b = [0u8; 8];
        b[2..].copy_from_slice(&d[..6]);
        VersionId(u64::from_be_bytes(b))
    }
}

impl fmt::Display for VersionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:012x}", self.0)
    }
}

impl fmt::Debug for VersionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "VersionId({self})")
    }
}

impl FromStr for VersionId {
    type Err = IdParseError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.len() != 12 || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(IdParseError("version id", s.to_string()));
        }
        u64::from_str_radix(s, 16)
            .map(VersionId)
            .map_err(|_| IdParseError("version id", s.to_string()))
    }
}

/// One mount of the tree (or one offline CLI operation): who made a change.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct SessionId(pub u64);

impl SessionId {
    /// A fresh random session id.
    pub fn random() -> SessionId {
        SessionId(rand::random::<u64>() >> 16)
    }
}

impl fmt::Display for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:012x}", self.0)
    }
}

impl fmt::Debug for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SessionId({self})")
    }
}

impl FromStr for SessionId {
    type Err = IdParseError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        u64::from_str_radix(s, 16)
            .map(SessionId)
            .map_err(|_| IdParseError("session id", s.to_string()))
    }
}

/// A pack file in the local store.
#[derive(
    Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default, Debug, Serialize, Deserialize,
)]
pub struct PackId(pub u64);

impl fmt::Display for PackId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_round_trip_through_text() {
        let c = ChunkId::of(b"hello");
        assert_eq!(c.to_string().parse::<ChunkId>().unwrap(), c);
        let v = VersionId::new(NodeId(7), Seq(42));
        assert_eq!(v.to_string().len(), 12);
        assert_eq!(v.to_string().parse::<VersionId>().unwrap(), v);
        assert_ne!(v, VersionId::new(NodeId(7), Seq(43)));
        let s = SessionId::random();
        assert_eq!(s.to_string().parse::<SessionId>().unwrap(), s);
        assert_eq!("#12".parse::<Seq>().unwrap(), Seq(12));
        assert!("zz".parse::<ChunkId>().is_err());
    }
}
