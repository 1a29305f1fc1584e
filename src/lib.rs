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
