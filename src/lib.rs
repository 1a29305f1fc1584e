//! clawfs: version control for an AI agent's state directory.
#![deny(missing_docs)]
pub mod ids;
pub mod realfs;
pub mod relpath;
pub mod store;
