//! A panic in a FUSE request handler is contained to that one request.
//!
//! fuser calls the handlers on its worker threads without catching anything: a handler that
//! panics ends its thread, and once the first thread's loop has ended, fuser's `Session::run`
//! returns and drops the mount. For a mount laid over the agent's own state directory, one bug
//! would then leave every later request waiting on threads that are gone, or the directory
//! unmounted under a running agent. [`Guarded`] runs each handler under `catch_unwind`: the
//! request that panicked is answered with EIO (fuser's reply does that when it is dropped
//! unanswered, as it is while unwinding), the panic is logged, the owner is told (the overlay
//! then has the recorder capture the tree again from the real files, so whatever the handler
//! changed before it failed is versioned), and the thread goes on serving.

use std::ffi::OsStr;
use std::io;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;
use std::time::{Duration, Instant, SystemTime};

use fuser::{
    AccessFlags, BsdFileFlags, CopyFileRangeFlags, FileHandle, Filesystem, INodeNo, IoctlFlags,
    KernelConfig, LockOwner, OpenFlags, PollEvents, PollFlags, PollNotifier, RenameFlags,
    ReplyAttr, ReplyBmap, ReplyCreate, ReplyData, ReplyDirectory, ReplyDirectoryPlus, ReplyEmpty,
    ReplyEntry, ReplyIoctl, ReplyLock, ReplyLseek, ReplyOpen, ReplyPoll, ReplyStatfs, ReplyWrite,
    ReplyXattr, Request, TimeOrNow, WriteFlags,
};

/// Told the operation's name and the panic's message after a handler panicked.
pub type OnPanic = Box<dyn Fn(&'static str, &str) + Send + Sync>;

/// A file system whose handlers' panics are contained (see the module doc).
pub struct Guarded<F> {
    inner: F,
    on_panic: Option<OnPanic>,
}

impl<F: Filesystem> Guarded<F> {
    /// Wraps `inner`.
    pub fn new(inner: F) -> Guarded<F> {
        Guarded {
            inner,
            on_panic: None,
        }
    }

    /// Calls `f` after each contained panic, on the thread that panicked.
    pub fn on_panic(mut self, f: impl Fn(&'static str, &str) + Send + Sync + 'static) -> Self {
        self.on_panic = Some(Box::new(f));
        self
    }

    fn run(&self, op: &'static str, handler: impl FnOnce()) {
        if let Err(panic) = catch_unwind(AssertUnwindSafe(handler)) {
            let what = crate::panic_message(panic.as_ref());
            if FAILED_REQUESTS.allows() {
                tracing::error!(op, panic = %what, "a request failed inside clawfs: it was answered with an I/O error, and the mount goes on");
            }
            if let Some(f) = &self.on_panic {
                // The owner's reaction must not take the thread down either.
                if catch_unwind(AssertUnwindSafe(|| f(op, &what))).is_err() {
                    tracing::error!(op, "reacting to the failed request failed too");
                }
            }
        }
    }
}

/// How many failures are logged in full per minute. Now that a failed request no longer ends
/// its thread, a bug that fails every request could fail thousands a second, and the log (the
/// daemon's stderr, with a backtrace per panic when `RUST_BACKTRACE` is set) sits on the
/// store's disk, which is often the agent's own.
const LOGGED_PER_MINUTE: u32 = 10;

/// Failed requests, for [`Guarded::run`]'s lines.
static FAILED_REQUESTS: LogBudget = LogBudget::new("failed requests");
/// Panics, for the panic hook's report ([`quiet_panic_hook`]).
static PANICS: LogBudget = LogBudget::new("panics");

/// At most [`LOGGED_PER_MINUTE`] events logged a minute; the rest are counted, and the count
/// is said with the first line of the next minute.
pub(crate) struct LogBudget {
    /// What the events are, for the count.
    what: &'static str,
    budget: parking_lot::Mutex<Budget>,
}

struct Budget {
    /// When the current minute began.
    since: Option<Instant>,
    /// Logged in it.
    logged: u32,
    /// Not logged in it.
    unsaid: u64,
}

impl LogBudget {
    pub(crate) const fn new(what: &'static str) -> LogBudget {
        LogBudget {
            what,
            budget: parking_lot::Mutex::new(Budget {
                since: None,
                logged: 0,
                unsaid: 0,
            }),
        }
    }

    /// Whether an event now is logged; if so, first says how many of the minute before were
    /// not.
    pub(crate) fn allows(&self) -> bool {
        match self.admit(Instant::now()) {
            Some(0) => true,
            Some(unsaid) => {
                tracing::error!(
                    unsaid,
                    of = self.what,
                    "not every one was logged in the last minute"
                );
                true
            }
            None => false,
        }
    }

    /// Whether an event at `now` is logged: `Some(n)` if it is, with `n` events of the minute
    /// before that were not (to be said first); `None` if it is only counted.
    pub(crate) fn admit(&self, now: Instant) -> Option<u64> {
        let mut b = self.budget.lock();
        let mut unsaid = 0;
        if b.since
            .is_none_or(|s| now.duration_since(s) >= Duration::from_secs(60))
        {
            unsaid = b.unsaid;
            *b = Budget {
                since: Some(now),
                logged: 0,
                unsaid: 0,
            };
        }
        if b.logged < LOGGED_PER_MINUTE {
            b.logged += 1;
            Some(unsaid)
        } else {
            b.unsaid += 1;
            None
        }
    }
}

/// Makes the process's panic hook report at most ten panics a minute (the
/// daemon's, whose panics are contained and could come in a stream).
pub fn quiet_panic_hook() {
    let report = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        if PANICS.allows() {
            report(info);
        }
    }));
}

/// Each handler, passed to the inner file system under [`Guarded::run`].
macro_rules! guarded {
    ($($name:ident($($arg:ident: $ty:ty),* $(,)?);)*) => {
        $(
            fn $name(&self, req: &Request, $($arg: $ty),*) {
                self.run(stringify!($name), || self.inner.$name(req, $($arg),*))
            }
        )*
    };
}

impl<F: Filesystem> Filesystem for Guarded<F> {
    // Before the first request and after the last: a panic here is the mount failing to start
    // or to finish, which the caller sees.
    fn init(&mut self, req: &Request, config: &mut KernelConfig) -> io::Result<()> {
        self.inner.init(req, config)
    }

    fn destroy(&mut self) {
        self.inner.destroy()
    }

    // `batch_forget` is left to fuser's default, which calls `forget` (guarded) for each inode:
    // fuser does not export the type it takes.
    guarded! {
        lookup(parent: INodeNo, name: &OsStr, reply: ReplyEntry);
        forget(ino: INodeNo, nlookup: u64);
        getattr(ino: INodeNo, fh: Option<FileHandle>, reply: ReplyAttr);
        setattr(
            ino: INodeNo,
            mode: Option<u32>,
            uid: Option<u32>,
            gid: Option<u32>,
            size: Option<u64>,
            atime: Option<TimeOrNow>,
            mtime: Option<TimeOrNow>,
            ctime: Option<SystemTime>,
            fh: Option<FileHandle>,
            crtime: Option<SystemTime>,
            chgtime: Option<SystemTime>,
            bkuptime: Option<SystemTime>,
            flags: Option<BsdFileFlags>,
            reply: ReplyAttr,
        );
        readlink(ino: INodeNo, reply: ReplyData);
        mknod(parent: INodeNo, name: &OsStr, mode: u32, umask: u32, rdev: u32, reply: ReplyEntry);
        mkdir(parent: INodeNo, name: &OsStr, mode: u32, umask: u32, reply: ReplyEntry);
        unlink(parent: INodeNo, name: &OsStr, reply: ReplyEmpty);
        rmdir(parent: INodeNo, name: &OsStr, reply: ReplyEmpty);
        symlink(parent: INodeNo, link_name: &OsStr, target: &Path, reply: ReplyEntry);
        rename(
            parent: INodeNo,
            name: &OsStr,
            newparent: INodeNo,
            newname: &OsStr,
            flags: RenameFlags,
            reply: ReplyEmpty,
        );
        link(ino: INodeNo, newparent: INodeNo, newname: &OsStr, reply: ReplyEntry);
        open(ino: INodeNo, flags: OpenFlags, reply: ReplyOpen);
        read(
            ino: INodeNo,
            fh: FileHandle,
            offset: u64,
            size: u32,
            flags: OpenFlags,
            lock_owner: Option<LockOwner>,
            reply: ReplyData,
        );
        write(
            ino: INodeNo,
            fh: FileHandle,
            offset: u64,
            data: &[u8],
            write_flags: WriteFlags,
            flags: OpenFlags,
            lock_owner: Option<LockOwner>,
            reply: ReplyWrite,
        );
        flush(ino: INodeNo, fh: FileHandle, lock_owner: LockOwner, reply: ReplyEmpty);
        release(
            ino: INodeNo,
            fh: FileHandle,
            flags: OpenFlags,
            lock_owner: Option<LockOwner>,
            flush: bool,
            reply: ReplyEmpty,
        );
        fsync(ino: INodeNo, fh: FileHandle, datasync: bool, reply: ReplyEmpty);
        opendir(ino: INodeNo, flags: OpenFlags, reply: ReplyOpen);
        readdir(ino: INodeNo, fh: FileHandle, offset: u64, reply: ReplyDirectory);
        readdirplus(ino: INodeNo, fh: FileHandle, offset: u64, reply: ReplyDirectoryPlus);
        releasedir(ino: INodeNo, fh: FileHandle, flags: OpenFlags, reply: ReplyEmpty);
        fsyncdir(ino: INodeNo, fh: FileHandle, datasync: bool, reply: ReplyEmpty);
        statfs(ino: INodeNo, reply: ReplyStatfs);
        setxattr(
            ino: INodeNo,
            name: &OsStr,
            value: &[u8],
            flags: i32,
            position: u32,
            reply: ReplyEmpty,
        );
        getxattr(ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr);
        listxattr(ino: INodeNo, size: u32, reply: ReplyXattr);
        removexattr(ino: INodeNo, name: &OsStr, reply: ReplyEmpty);
        access(ino: INodeNo, mask: AccessFlags, reply: ReplyEmpty);
        create(
            parent: INodeNo,
            name: &OsStr,
            mode: u32,
            umask: u32,
            flags: i32,
            reply: ReplyCreate,
        );
        getlk(
            ino: INodeNo,
            fh: FileHandle,
            lock_owner: LockOwner,
            start: u64,
            end: u64,
            typ: i32,
            pid: u32,
            reply: ReplyLock,
        );
        setlk(
            ino: INodeNo,
            fh: FileHandle,
            lock_owner: LockOwner,
            start: u64,
            end: u64,
            typ: i32,
            pid: u32,
            sleep: bool,
            reply: ReplyEmpty,
        );
        bmap(ino: INodeNo, blocksize: u32, idx: u64, reply: ReplyBmap);
        ioctl(
            ino: INodeNo,
            fh: FileHandle,
            flags: IoctlFlags,
            cmd: u32,
            in_data: &[u8],
            out_size: u32,
            reply: ReplyIoctl,
        );
        poll(
            ino: INodeNo,
            fh: FileHandle,
            ph: PollNotifier,
            events: PollEvents,
            flags: PollFlags,
            reply: ReplyPoll,
        );
        fallocate(
            ino: INodeNo,
            fh: FileHandle,
            offset: u64,
            length: u64,
            mode: i32,
            reply: ReplyEmpty,
        );
        lseek(ino: INodeNo, fh: FileHandle, offset: i64, whence: i32, reply: ReplyLseek);
        copy_file_range(
            ino_in: INodeNo,
            fh_in: FileHandle,
            offset_in: u64,
            ino_out: INodeNo,
            fh_out: FileHandle,
            offset_out: u64,
            len: u64,
            flags: CopyFileRangeFlags,
            reply: ReplyWrite,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use std::time::Duration;

    use fuser::{Errno, FileAttr, FileType};

    /// A stream of failures is logged ten a minute; the rest are counted, and the count is said
    /// with the first line of the next minute.
    #[test]
    fn a_stream_of_failures_is_logged_ten_a_minute_and_counted_beyond() {
        let budget = LogBudget::new("test events");
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        for i in 0..10 {
            assert_eq!(budget.admit(at(i)), Some(0));
        }
        for i in 10..1000 {
            assert_eq!(budget.admit(at(i)), None);
        }
        assert_eq!(budget.admit(at(60_000)), Some(990));
        assert_eq!(budget.admit(at(61_000)), Some(0));
    }

    /// A file system whose lookup of `boom` panics; everything else is an empty root.
    struct Boom;

    impl Filesystem for Boom {
        fn lookup(&self, _req: &Request, _parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
            if name == "boom" {
                panic!("lookup of boom");
            }
            reply.error(Errno::ENOENT);
        }

        fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
            let t = SystemTime::UNIX_EPOCH;
            reply.attr(
                &Duration::ZERO,
                &FileAttr {
                    ino,
                    size: 0,
                    blocks: 0,
                    atime: t,
                    mtime: t,
                    ctime: t,
                    crtime: t,
                    kind: FileType::Directory,
                    perm: 0o755,
                    nlink: 2,
                    uid: 0,
                    gid: 0,
                    rdev: 0,
                    blksize: 4096,
                    flags: 0,
                },
            );
        }
    }

    /// Over a real mount served by one worker thread: ten lookups that panic are each answered
    /// with EIO and reported, and the mount still answers afterwards. Unguarded, the first
    /// panic ends the only thread and the next request waits forever; the timeout turns that
    /// into a failure, after detaching the mount.
    #[test]
    fn a_panicking_handler_fails_only_its_request() {
        if unsafe { libc::geteuid() } != 0 || !Path::new("/dev/fuse").exists() {
            eprintln!("skipped: mounting needs root and /dev/fuse");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let seen = Arc::new(AtomicUsize::new(0));
        let s = seen.clone();
        let fs = Guarded::new(Boom).on_panic(move |op, what| {
            assert_eq!((op, what), ("lookup", "lookup of boom"));
            s.fetch_add(1, Ordering::SeqCst);
        });
        let mut config = fuser::Config::default();
        config.mount_options = vec![fuser::MountOption::FSName("clawfs-guard-test".into())];
        config.n_threads = Some(1);
        let session = fuser::Session::new(fs, dir.path(), &config)
            .unwrap()
            .spawn()
            .unwrap();
        let root = dir.path().to_path_buf();
        let (tx, rx) = crossbeam_channel::bounded(1);
        std::thread::spawn(move || {
            let errors: Vec<Option<i32>> = (0..10)
                .map(|_| {
                    std::fs::metadata(root.join("boom"))
                        .unwrap_err()
                        .raw_os_error()
                })
                .collect();
            let after = std::fs::metadata(root.join("other")).unwrap_err();
            let _ = tx.send((errors, after.raw_os_error()));
        });
        let answered = rx.recv_timeout(Duration::from_secs(20));
        if answered.is_err() {
            let path = std::ffi::CString::new(dir.path().as_os_str().as_encoded_bytes()).unwrap();
            // SAFETY: `path` is a valid C string for the duration of the call.
            unsafe { libc::umount2(path.as_ptr(), libc::MNT_DETACH) };
        } else {
            session.umount_and_join().ok();
        }
        let (errors, after) = answered.expect("the mount stopped answering after a panic");
        assert_eq!(errors, vec![Some(libc::EIO); 10]);
        assert_eq!(after, Some(libc::ENOENT));
        assert_eq!(seen.load(Ordering::SeqCst), 10);
    }
}
