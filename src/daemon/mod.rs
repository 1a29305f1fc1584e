//! The mount daemon: the recorder thread, the control socket, and the mount itself.

pub mod browse;
pub mod control;
pub mod mount;
pub mod recorder_thread;
pub mod sentinel;
