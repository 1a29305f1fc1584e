//! Errors of the version store.

use std::io;
use std::path::PathBuf;

use crate::ids::{ChunkId, PackId};
use crate::relpath::PathError;

/// Everything that can go wrong inside the version store. Bad data is an error, never a panic.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// An I/O error, with what was being done.
    #[error("{what}: {source}")]
    Io {
        /// What the store was doing.
        what: String,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// An epoch failed half-written and could not be taken back.
    #[error("epoch {0} cannot be written: an earlier epoch failed half-written (reopen the store to discard it)")]
    Unfinished(crate::ids::Seq),
    /// The catalogue database failed.
    #[error("catalogue: {}", show_sled(.0))]
    Catalog(#[from] sled::Error),
    /// The store was written by a format this build does not know.
    #[error("store at {path} has format version {found}; this clawfs reads version {expected} (upgrade clawfs, or use another --store)")]
    UnknownFormat {
        /// The store directory.
        path: PathBuf,
        /// What the store says.
        found: u32,
        /// What this build reads.
        expected: u32,
    },
    /// Another process (a running daemon) holds the store.
    #[error("store {0} is in use by another process (a running `clawfs mount`, or a command still running)")]
    Busy(PathBuf),
    /// The directory is not a clawfs store.
    #[error("{0} is not a clawfs store (no catalogue); create one with `clawfs mount` or give the right --store")]
    NotAStore(PathBuf),
    /// A catalogue record does not decode.
    #[error("catalogue record {what} is corrupt: {detail}")]
    CorruptCatalog {
        /// Which record.
        what: String,
        /// Why it does not decode.
        detail: String,
    },
    /// A pack record failed its checksum or does not hold the chunk the index says.
    #[error("pack {pack} is corrupt at offset {offset}: {detail}")]
    CorruptPack {
        /// The pack file.
        pack: PackId,
        /// Byte offset of the bad record.
        offset: u64,
        /// What is wrong.
        detail: String,
    },
    /// A chunk the catalogue refers to is not in any pack.
    #[error("chunk {0} is missing from the store")]
    MissingChunk(ChunkId),
    /// A path that cannot name anything inside the tree.
    #[error(transparent)]
    Path(#[from] PathError),
    /// The operation names a path that does not exist at that moment.
    #[error("{0} does not exist")]
    NotFound(String),
    /// A rollback names a path that exists neither at its moment nor now.
    #[error("{path} exists neither at #{seq} nor now: nothing to roll back (check the path, or `clawfs history {path}`)")]
    NeverThere {
        /// The path as named.
        path: String,
        /// The moment rolled back to.
        seq: crate::ids::Seq,
    },
    /// The operation needs a directory and got something else, or the reverse.
    #[error("{0}")]
    WrongKind(String),
    /// A directory that should be empty is not.
    #[error("{0} is not empty")]
    NotEmpty(String),
    /// A path that must not exist already does.
    #[error("{0} already exists")]
    Exists(String),
    /// A moment that names no version.
    #[error("{0}")]
    NoSuchMoment(String),
    /// A mark with that name exists already, or none exists.
    #[error("{0}")]
    Mark(String),
    /// The store's own bookkeeping disagrees with itself, a defect of clawfs: what would have
    /// been recorded wrong is refused instead (the recorder then captures the real file again).
    #[error("{0} (a defect of clawfs: refused rather than recorded wrong)")]
    Defect(String),
    /// Writing would reach into the room kept free for the catalogue (see [`super::room`]).
    #[error("the store's disk is full: {} free, and {} is kept free for the catalogue", mib(*.free), mib(*.reserve))]
    Full {
        /// Bytes free.
        free: u64,
        /// Bytes kept free.
        reserve: u64,
    },
}

fn mib(n: u64) -> String {
    format!("{:.1} MiB", n as f64 / (1u64 << 20) as f64)
}

/// Result alias of the store layer.
pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// Attaches "what was being done" to an I/O error.
pub(crate) trait IoContext<T> {
    fn ctx(self, what: impl FnOnce() -> String) -> Result<T>;
}

impl<T> IoContext<T> for io::Result<T> {
    fn ctx(self, what: impl FnOnce() -> String) -> Result<T> {
        self.map_err(|source| StoreError::Io {
            what: what(),
            source,
        })
    }
}

/// sled shows its I/O errors with `Debug` ("IO error: Os { code: 28, … }"); say them plainly.
fn show_sled(e: &sled::Error) -> String {
    match e {
        sled::Error::Io(io) => io.to_string(),
        other => other.to_string(),
    }
}
