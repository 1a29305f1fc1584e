//! The version store.
pub mod chunker;
pub mod chunks;
pub mod content;
pub mod error;
pub mod pack;
pub mod schema;
