//! The FUSE side: thin adapters over the store.
//!
//! - [`overlay`]: the read-write passthrough mounted over the state directory, which reports
//!   every change to the recorder thread in the order the writers issued it.
//! - [`browse`]: the read-only view of any past moment.
//! - [`filter`]: which paths are versioned.
//! - [`guard`]: a panic in a request handler fails that request, not the mount.
//! - [`iomode`]: which open files the kernel serves without the daemon (passthrough).
//! - [`inodes`]: the inode table.
//! - [`requests`]: how requests reach the daemon (io_uring or `/dev/fuse`).
//!
//! The `*at()` calls they serve requests with are in [`crate::sys`].

pub mod browse;
pub mod filter;
pub mod guard;
pub mod inodes;
pub mod iomode;
pub mod overlay;
pub mod requests;
