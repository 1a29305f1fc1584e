//! clawfs: version control for an AI agent's state directory.
//!
//! ```text
//! writers ─► fs::overlay (FUSE passthrough) ─► daemon::recorder_thread ─► store (sled + packs)
//!                                                                            │
//!          commands (CLI, or forwarded over daemon::control) ◄───────────────┤
//!          fs::browse (read-only past) ◄─────────────────────────────────────┤
//!          replicate (push / clone / restore) ─► crypto (seal) ─► remote (OpenDAL: S3, dir)
//! ```
#![deny(missing_docs)]
pub mod cli;
pub mod commands;
pub mod config;
pub mod crypto;
pub mod daemon;
pub mod fs;
pub mod ids;
pub mod procs;
pub mod realfs;
pub mod relpath;
pub mod remote;
pub mod replicate;
pub mod store;
pub mod sys;
pub mod when;

/// What a caught panic said, as text (for the logs and `status` of the threads that survive
/// one: the recorder, the request threads, the replicator).
pub fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic".into())
}
