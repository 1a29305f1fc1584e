//! Encrypted replication to object storage, and restore from it.
//!
//! A [`Repo`](repo::Repo) is a remote opened with its passphrase. [`push`] ships the epochs a
//! remote lacks (their catalogue records, and the chunk records they use that the remote does
//! not hold yet), sealed, in the order [`layout`] documents; [`restore`] rebuilds a store from
//! a remote (a clone) and writes a tree out of a store; [`check`] reads a repository whole. The [`replicator`] thread runs `push`
//! in the mount daemon, continuously or on a schedule, and keeps its cursor in the store so a
//! restart resumes where it stopped.

pub mod check;
pub mod layout;
pub mod passphrase;
pub mod push;
pub mod replicator;
pub mod repo;
pub mod restore;
pub mod settings;
pub mod thin;

use crate::crypto::CryptoError;
use crate::remote::RemoteError;
use crate::store::StoreError;

/// Errors of replication.
#[derive(Debug, thiserror::Error)]
pub enum ReplicaError {
    /// The passphrase does not open the repository.
    #[error("wrong passphrase for {0}")]
    WrongPassphrase(String),
    /// A passphrase is needed and none was given.
    #[error("{0} needs the repository passphrase: set CLAWFS_PASSPHRASE, pass --passphrase-file, or run on a terminal")]
    NeedPassphrase(String),
    /// The remote holds no repository.
    #[error("no clawfs repository at {0} (push to it first, or check the URL)")]
    NoRepository(String),
    /// An object is authentic but not what it should be.
    #[error("refusing a remote object: {0}")]
    BadObject(String),
    /// Wrong use.
    #[error("{0}")]
    Usage(String),
    /// Local I/O.
    #[error("{0}")]
    Io(String),
    /// The remote failed.
    #[error(transparent)]
    Remote(#[from] RemoteError),
    /// Keys or sealing failed.
    #[error(transparent)]
    Crypto(#[from] CryptoError),
    /// The local store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<sled::Error> for ReplicaError {
    /// Replication state lives in side trees of the store: their errors are store errors.
    fn from(e: sled::Error) -> Self {
        ReplicaError::Store(e.into())
    }
}

/// Result alias of replication.
pub type Result<T> = std::result::Result<T, ReplicaError>;

/// Runs `work` (a push, a thinning, a reload of the remotes: `what` names it), turning a
/// panic inside it into an error, as a lost connection would fail it: the remote is left as
/// after any interrupted run, which the next one takes up, and the daemon's replicator thread,
/// with every later push, goes on. (A reload cut short leaves the remotes it had not reached
/// unloaded until the next one.)
pub(crate) fn contained<T>(what: &str, work: impl FnOnce() -> Result<T>) -> Result<T> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(work)).unwrap_or_else(|panic| {
        let panic = crate::panic_message(panic.as_ref());
        tracing::error!(%panic, "{what} failed inside clawfs");
        Err(ReplicaError::Io(format!(
            "{what} failed inside clawfs ({panic})"
        )))
    })
}

/// A device id: names one machine's history in a shared bucket (16 hex digits).
pub fn new_device_id() -> String {
    hex::encode(crate::crypto::random::<8>())
}
