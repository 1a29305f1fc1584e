//! clawfs: version control for an AI agent's state directory.
#![deny(missing_docs)]
pub mod cli;
pub mod commands;
pub mod config;
pub mod daemon;
pub mod fs;
pub mod ids;
pub mod procs;
pub mod realfs;
pub mod relpath;
pub mod store;
pub mod when;
