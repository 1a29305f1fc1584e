//! How requests reach the daemon: through io_uring rings, one queue per CPU (Linux 6.14+, with
//! the `fuse` module's `enable_uring` on), or through `/dev/fuse`.
//!
//! Through `/dev/fuse`, every request wakes a daemon thread that may sleep on another CPU, and
//! its reply wakes the caller back: on a virtual machine whose idle CPUs halt, those two
//! wake-ups cost more than the work (about 70 µs a round trip here, against 9–12 µs with both
//! on one CPU). Through the rings, the kernel hands a request to a thread bound to the caller's
//! CPU, and nothing crosses CPUs.

use std::sync::OnceLock;

use serde::Serialize;

/// The kernel's switch for FUSE over io_uring.
pub const ENABLE_URING: &str = "/sys/module/fuse/parameters/enable_uring";

/// Ring entries (one thread each) per online CPU: two, so that one slow request (an fsync
/// waiting for its epoch to be durable) does not hold up the next from the same CPU.
pub const RING_THREADS: usize = 2;

/// Whether the mount asks for io_uring, and what the session made of it.
#[derive(Debug, Default)]
pub struct RequestPath {
    /// Asked for (not turned off with `-o io_uring=off`).
    pub wanted: bool,
    /// Set once the session exists.
    pub rings: OnceLock<fuser::Rings>,
}

/// The request path as `status` shows it.
#[derive(Debug, Serialize, PartialEq, Eq)]
pub struct Described {
    /// Requests come through io_uring.
    pub io_uring: bool,
    /// One line: the path, and why not io_uring when not.
    pub how: String,
    /// Bytes of ring-entry buffers in use: an entry that served a large request or reply (a
    /// big write or read) holds its 1 MiB buffers until it has been idle for a second.
    pub buffers_held: u64,
}

impl RequestPath {
    /// What to tell the user.
    pub fn describe(&self) -> Described {
        let rings = self.rings.get();
        let state = rings.map(fuser::Rings::state).unwrap_or_default();
        let dev = |why: String| Described {
            io_uring: false,
            how: format!("/dev/fuse ({why})"),
            buffers_held: 0,
        };
        match state {
            fuser::RingState::Serving { queues, entries } => {
                let held = rings.map_or(0, fuser::Rings::buffers_held) as u64;
                let holding = if held > 0 {
                    format!(
                        "; {} of buffers held until idle",
                        crate::commands::human(held)
                    )
                } else {
                    String::new()
                };
                Described {
                    io_uring: true,
                    how: format!(
                        "io_uring, one queue per CPU ({queues} CPUs, {entries} ring entries{holding})"
                    ),
                    buffers_held: held,
                }
            }
            _ if !self.wanted => dev("io_uring turned off with -o io_uring=off".into()),
            fuser::RingState::Failed(e) => dev(format!("io_uring could not be set up: {e}")),
            fuser::RingState::Agreed => dev("io_uring starting".into()),
            fuser::RingState::NotAgreed => dev(kernel_says()),
        }
    }
}

/// Why the kernel did not offer io_uring.
fn kernel_says() -> String {
    match std::fs::read_to_string(ENABLE_URING) {
        Ok(v) if v.trim() == "Y" => {
            "the kernel offered no io_uring; remount to pick it up if it was turned on since".into()
        }
        Ok(_) => format!("io_uring is off in the kernel: echo Y > {ENABLE_URING}, then remount"),
        Err(_) => "this kernel has no FUSE over io_uring (Linux 6.14+)".into(),
    }
}
