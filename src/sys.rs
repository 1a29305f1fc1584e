//! Thin, safe wrappers over the system calls clawfs makes through `libc`, for every layer: the
//! `*at()` calls the overlay serves requests with, and the file system queries the store and
//! the daemon make.
//!
//! Every `*at()` path is relative to the directory fd opened before mounting (invariant 1), so
//! the daemon reaches the real files underneath its own mount. `""` names that directory itself.

use std::ffi::{CStr, CString, OsStr};
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;

fn cstr(p: &OsStr) -> io::Result<CString> {
    CString::new(if p.is_empty() {
        b".".as_slice()
    } else {
        p.as_bytes()
    })
    .map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))
}

fn check(r: libc::c_int) -> io::Result<libc::c_int> {
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

/// One of the calls that fill a plain C struct about an open file (`fstat`, `fstatfs`,
/// `fstatvfs`).
fn stat_fd<T>(
    fd: RawFd,
    call: unsafe extern "C" fn(libc::c_int, *mut T) -> libc::c_int,
) -> io::Result<T> {
    // SAFETY: only called with libc's structs, for which all zeroes is a valid value; `call`
    // writes the struct before it is read.
    unsafe {
        let mut st: T = std::mem::zeroed();
        check(call(fd, &mut st))?;
        Ok(st)
    }
}

/// One of the calls that fill a plain C struct about a path (`statfs`, `statvfs`).
fn stat_path<T>(
    path: &std::path::Path,
    call: unsafe extern "C" fn(*const libc::c_char, *mut T) -> libc::c_int,
) -> io::Result<T> {
    let c = cstr(path.as_os_str())?;
    // SAFETY: as in `stat_fd`; `c` is a valid C string.
    unsafe {
        let mut st: T = std::mem::zeroed();
        check(call(c.as_ptr(), &mut st))?;
        Ok(st)
    }
}

/// `fstatat(dir, path, AT_SYMLINK_NOFOLLOW)`; the directory itself for `""`.
pub fn lstat_at(dir: RawFd, path: &OsStr) -> io::Result<libc::stat> {
    let c = cstr(path)?;
    // SAFETY: `st` is written by the kernel before it is read; `c` is NUL-terminated.
    unsafe {
        let mut st: libc::stat = std::mem::zeroed();
        check(libc::fstatat(
            dir,
            c.as_ptr(),
            &mut st,
            libc::AT_SYMLINK_NOFOLLOW,
        ))?;
        Ok(st)
    }
}

/// `faccessat(dir, path, mode, AT_SYMLINK_NOFOLLOW)`: whether this process may access the
/// file as `mode` asks (`F_OK`, or `R_OK | W_OK | X_OK` bits).
pub fn access_at(dir: RawFd, path: &OsStr, mode: i32) -> io::Result<()> {
    let c = cstr(path)?;
    // SAFETY: `c` is NUL-terminated; faccessat only reads it.
    check(unsafe { libc::faccessat(dir, c.as_ptr(), mode, libc::AT_SYMLINK_NOFOLLOW) })?;
    Ok(())
}

/// `fstat(fd)`.
pub fn fstat(fd: RawFd) -> io::Result<libc::stat> {
    stat_fd(fd, libc::fstat)
}

/// `openat(dir, path, flags, mode)`, always with `O_CLOEXEC`.
pub fn open_at(dir: RawFd, path: &OsStr, flags: i32, mode: u32) -> io::Result<File> {
    let c = cstr(path)?;
    // SAFETY: `c` is NUL-terminated; on success the kernel returns a fresh fd we now own.
    let fd = check(unsafe { libc::openat(dir, c.as_ptr(), flags | libc::O_CLOEXEC, mode) })?;
    // SAFETY: `fd` was just returned by openat and nothing else owns it.
    Ok(unsafe { File::from_raw_fd(fd) })
}

/// Opens a directory as an owned fd (before mounting over it).
pub fn open_dir(path: &std::path::Path) -> io::Result<OwnedFd> {
    let c = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    // SAFETY: `c` is NUL-terminated; the fd returned is owned by the OwnedFd.
    let fd = check(unsafe {
        libc::open(
            c.as_ptr(),
            libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC,
        )
    })?;
    // SAFETY: fresh fd.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// `mkdirat`.
pub fn mkdir_at(dir: RawFd, path: &OsStr, mode: u32) -> io::Result<()> {
    let c = cstr(path)?;
    // SAFETY: NUL-terminated path.
    check(unsafe { libc::mkdirat(dir, c.as_ptr(), mode) }).map(drop)
}

/// `mknodat`.
pub fn mknod_at(dir: RawFd, path: &OsStr, mode: u32, rdev: u64) -> io::Result<()> {
    let c = cstr(path)?;
    // SAFETY: NUL-terminated path.
    check(unsafe { libc::mknodat(dir, c.as_ptr(), mode, rdev) }).map(drop)
}

/// `symlinkat`.
pub fn symlink_at(target: &OsStr, dir: RawFd, path: &OsStr) -> io::Result<()> {
    let t =
        CString::new(target.as_bytes()).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    let c = cstr(path)?;
    // SAFETY: both NUL-terminated.
    check(unsafe { libc::symlinkat(t.as_ptr(), dir, c.as_ptr()) }).map(drop)
}

/// `readlinkat`.
pub fn readlink_at(dir: RawFd, path: &OsStr) -> io::Result<Vec<u8>> {
    readlink_c(dir, &cstr(path)?)
}

/// The target of the symlink `fd` is an `O_PATH | O_NOFOLLOW` descriptor of.
pub fn readlink_fd(fd: RawFd) -> io::Result<Vec<u8>> {
    readlink_c(fd, c"")
}

fn readlink_c(dir: RawFd, c: &CStr) -> io::Result<Vec<u8>> {
    let mut buf = vec![0u8; libc::PATH_MAX as usize + 1];
    // SAFETY: `c` is NUL-terminated; the kernel writes at most `buf.len()` bytes into `buf`.
    let n = unsafe { libc::readlinkat(dir, c.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    buf.truncate(n as usize);
    Ok(buf)
}

/// Opens the file an `O_PATH` descriptor holds, with `flags` (and `O_CLOEXEC`), through
/// `/proc/self/fd`: the very inode, wherever its names have gone since.
pub fn reopen(fd: RawFd, flags: i32) -> io::Result<File> {
    open_at(
        libc::AT_FDCWD,
        OsStr::new(&format!("/proc/self/fd/{fd}")),
        flags,
        0,
    )
}

/// `unlinkat` (with `AT_REMOVEDIR` for directories).
pub fn unlink_at(dir: RawFd, path: &OsStr, is_dir: bool) -> io::Result<()> {
    let c = cstr(path)?;
    let flags = if is_dir { libc::AT_REMOVEDIR } else { 0 };
    // SAFETY: NUL-terminated path.
    check(unsafe { libc::unlinkat(dir, c.as_ptr(), flags) }).map(drop)
}

/// `renameat2` with the given flags.
pub fn rename_at(dir: RawFd, from: &OsStr, to: &OsStr, flags: u32) -> io::Result<()> {
    let (f, t) = (cstr(from)?, cstr(to)?);
    // SAFETY: both NUL-terminated; renameat2 through the raw syscall (glibc may lack the wrapper).
    check(unsafe {
        libc::syscall(libc::SYS_renameat2, dir, f.as_ptr(), dir, t.as_ptr(), flags) as libc::c_int
    })
    .map(drop)
}

/// `linkat`.
pub fn link_at(dir: RawFd, from: &OsStr, to: &OsStr) -> io::Result<()> {
    let (f, t) = (cstr(from)?, cstr(to)?);
    // SAFETY: both NUL-terminated.
    check(unsafe { libc::linkat(dir, f.as_ptr(), dir, t.as_ptr(), 0) }).map(drop)
}

/// `fchmodat` (never follows: callers pass non-symlinks).
pub fn chmod_at(dir: RawFd, path: &OsStr, mode: u32) -> io::Result<()> {
    let c = cstr(path)?;
    // SAFETY: NUL-terminated path.
    check(unsafe { libc::fchmodat(dir, c.as_ptr(), mode, 0) }).map(drop)
}

/// `fchownat(AT_SYMLINK_NOFOLLOW)`; `u32::MAX` leaves an id alone.
pub fn chown_at(dir: RawFd, path: &OsStr, uid: u32, gid: u32) -> io::Result<()> {
    let c = cstr(path)?;
    // SAFETY: NUL-terminated path.
    check(unsafe { libc::fchownat(dir, c.as_ptr(), uid, gid, libc::AT_SYMLINK_NOFOLLOW) }).map(drop)
}

/// `utimensat(AT_SYMLINK_NOFOLLOW)` with two timespecs (may hold `UTIME_NOW`/`UTIME_OMIT`).
pub fn utimens_at(dir: RawFd, path: &OsStr, times: &[libc::timespec; 2]) -> io::Result<()> {
    let c = cstr(path)?;
    // SAFETY: NUL-terminated path and two valid timespecs.
    check(unsafe { libc::utimensat(dir, c.as_ptr(), times.as_ptr(), libc::AT_SYMLINK_NOFOLLOW) })
        .map(drop)
}

/// `ftruncate`.
pub fn ftruncate(f: &File, size: u64) -> io::Result<()> {
    f.set_len(size)
}

/// `fallocate`.
pub fn fallocate(f: &File, mode: i32, offset: u64, len: u64) -> io::Result<()> {
    // SAFETY: a valid open fd.
    check(unsafe { libc::fallocate(f.as_raw_fd(), mode, offset as i64, len as i64) }).map(drop)
}

/// `lseek(SEEK_DATA)`: the first offset at or after `offset` that holds data, `None` when
/// only a hole follows. A file system that does not track holes reports `offset` itself.
pub fn seek_data(f: &File, offset: u64) -> io::Result<Option<u64>> {
    // SAFETY: a valid open fd; lseek reads nothing from memory.
    let r = unsafe { libc::lseek(f.as_raw_fd(), offset as libc::off_t, libc::SEEK_DATA) };
    if r >= 0 {
        return Ok(Some(r as u64));
    }
    let e = io::Error::last_os_error();
    match e.raw_os_error() {
        Some(libc::ENXIO) => Ok(None),
        _ => Err(e),
    }
}

/// `fstatvfs`.
pub fn fstatvfs(fd: RawFd) -> io::Result<libc::statvfs> {
    stat_fd(fd, libc::fstatvfs)
}

/// `statvfs` of the file system holding `path`.
pub fn statvfs(path: &std::path::Path) -> io::Result<libc::statvfs> {
    stat_path(path, libc::statvfs)
}

/// Makes `cmd` start its process in a session of its own, so that a signal to this process's
/// group (a terminal's Ctrl-C, a killed shell) does not reach it.
pub fn new_session(cmd: &mut std::process::Command) -> &mut std::process::Command {
    use std::os::unix::process::CommandExt;
    // SAFETY: setsid is async-signal-safe and touches no memory of the parent.
    unsafe {
        cmd.pre_exec(|| {
            libc::setsid();
            Ok(())
        })
    }
}

/// Waits until process `pid` has ended (at once if there is no such process).
pub fn wait_for_exit(pid: u32) -> io::Result<()> {
    // SAFETY: pidfd_open takes a pid and flags and returns a new descriptor or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
    if fd < 0 {
        let e = io::Error::last_os_error();
        return match e.raw_os_error() {
            Some(libc::ESRCH) => Ok(()),
            _ => Err(e),
        };
    }
    // SAFETY: the descriptor was just opened and is ours.
    let fd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
    let mut p = libc::pollfd {
        fd: fd.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    loop {
        // SAFETY: one valid pollfd.
        match unsafe { libc::poll(&mut p, 1, -1) } {
            -1 if io::Error::last_os_error().raw_os_error() == Some(libc::EINTR) => {}
            -1 => return Err(io::Error::last_os_error()),
            _ => return Ok(()),
        }
    }
}

/// `statfs` of a path. On a FUSE mount it always reaches the daemon (nothing caches it), so it
/// tells a live mount from one whose daemon died.
pub fn statfs_path(path: &std::path::Path) -> io::Result<libc::statfs> {
    stat_path(path, libc::statfs)
}

/// `f_type` of a FUSE file system in `statfs`.
pub const FUSE_SUPER_MAGIC: libc::__fsword_t = 0x6573_5546;

/// `f_type` of overlayfs (a container's root) in `statfs`.
pub const OVERLAYFS_SUPER_MAGIC: libc::__fsword_t = 0x794c_7630;

/// `fstatfs` of an open file: the file system it is on.
pub fn fstatfs(fd: RawFd) -> io::Result<libc::statfs> {
    stat_fd(fd, libc::fstatfs)
}

/// The `/proc/self/fd/<dir>/<path>` name of a path, for calls that have no `*at()` form (xattrs).
pub fn proc_path(dir: RawFd, path: &OsStr) -> CString {
    let mut v = format!("/proc/self/fd/{dir}").into_bytes();
    if !path.is_empty() {
        v.push(b'/');
        v.extend_from_slice(path.as_bytes());
    }
    CString::new(v).expect("paths have no NUL")
}

/// The result of an xattr call that fills `buf`: with `size == 0` (a size probe) a vector of
/// the needed length, else the bytes written.
fn sized(r: isize, mut buf: Vec<u8>, size: usize) -> io::Result<Vec<u8>> {
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    if size == 0 {
        return Ok(vec![0u8; r as usize]);
    }
    buf.truncate(r as usize);
    Ok(buf)
}

/// `lgetxattr`; with `size == 0` returns the needed size in a vector of that length of zeros.
pub fn getxattr(p: &CStr, name: &OsStr, size: usize) -> io::Result<Vec<u8>> {
    let n = cstr(name)?;
    let mut buf = vec![0u8; size];
    // SAFETY: the kernel writes at most `size` bytes into `buf`.
    let r = unsafe { libc::lgetxattr(p.as_ptr(), n.as_ptr(), buf.as_mut_ptr().cast(), size) };
    sized(r, buf, size)
}

/// `llistxattr`, as for [`getxattr`].
pub fn listxattr(p: &CStr, size: usize) -> io::Result<Vec<u8>> {
    let mut buf = vec![0u8; size];
    // SAFETY: the kernel writes at most `size` bytes into `buf`.
    let r = unsafe { libc::llistxattr(p.as_ptr(), buf.as_mut_ptr().cast(), size) };
    sized(r, buf, size)
}

/// The `user.` extended attributes of the file or directory `p` names (following a last
/// symlink), by name; none where the file system has no extended attributes.
pub fn user_xattrs(p: &CStr) -> io::Result<std::collections::BTreeMap<Vec<u8>, Vec<u8>>> {
    let mut out = std::collections::BTreeMap::new();
    // SAFETY (both calls): the kernel writes at most the given size into the buffer.
    let listed = loop {
        let size = unsafe { libc::listxattr(p.as_ptr(), std::ptr::null_mut(), 0) };
        if size < 0 {
            let e = io::Error::last_os_error();
            return match e.raw_os_error() {
                Some(libc::ENOTSUP) => Ok(out),
                _ => Err(e),
            };
        }
        if size == 0 {
            return Ok(out); // most files: no attributes, one call
        }
        let mut buf = vec![0u8; size as usize];
        let n = unsafe { libc::listxattr(p.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
        if n >= 0 {
            buf.truncate(n as usize);
            break buf;
        }
        if io::Error::last_os_error().raw_os_error() != Some(libc::ERANGE) {
            return Err(io::Error::last_os_error());
        }
        // The list grew between the two calls: ask again.
    };
    for name in listed
        .split(|&b| b == 0)
        .filter(|n| n.starts_with(b"user."))
    {
        let n = CString::new(name).expect("split at NUL");
        let value = loop {
            // SAFETY: as above.
            let size = unsafe { libc::getxattr(p.as_ptr(), n.as_ptr(), std::ptr::null_mut(), 0) };
            if size < 0 {
                break None; // removed meanwhile
            }
            let mut buf = vec![0u8; size as usize];
            // SAFETY: as above.
            let got = unsafe {
                libc::getxattr(p.as_ptr(), n.as_ptr(), buf.as_mut_ptr().cast(), buf.len())
            };
            if got >= 0 {
                buf.truncate(got as usize);
                break Some(buf);
            }
            if io::Error::last_os_error().raw_os_error() != Some(libc::ERANGE) {
                break None;
            }
        };
        if let Some(v) = value {
            out.insert(name.to_vec(), v);
        }
    }
    Ok(out)
}

/// `lsetxattr`.
pub fn setxattr(p: &CStr, name: &OsStr, value: &[u8], flags: i32) -> io::Result<()> {
    let n = cstr(name)?;
    // SAFETY: valid pointers and lengths.
    check(unsafe {
        libc::lsetxattr(
            p.as_ptr(),
            n.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            flags,
        )
    })
    .map(drop)
}

/// `lremovexattr`.
pub fn removexattr(p: &CStr, name: &OsStr) -> io::Result<()> {
    let n = cstr(name)?;
    // SAFETY: valid pointers.
    check(unsafe { libc::lremovexattr(p.as_ptr(), n.as_ptr()) }).map(drop)
}

/// Nanoseconds since the epoch of a stat's mtime.
pub fn mtime_ns(st: &libc::stat) -> i64 {
    st.st_mtime * 1_000_000_000 + st.st_mtime_nsec
}

/// Nanoseconds since the epoch of a stat's ctime (the inode's last change: content, mode,
/// names, attributes).
pub fn ctime_ns(st: &libc::stat) -> i64 {
    st.st_ctime * 1_000_000_000 + st.st_ctime_nsec
}

/// Keeps a daemon's heap from growing with its thread count. glibc gives every thread that
/// allocates under contention an arena of its own and rarely hands their freed memory back; a
/// mount's FUSE threads each pass 1 MiB write buffers to the recorder, so memory freed in one
/// arena was never reused by another (a 290 MB tree written through the mount: 97 MiB peak
/// RSS with the default arenas, 70 MiB with two). Called first thing in a daemon.
pub fn limit_malloc_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets a tunable of the allocator, which it synchronises itself.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 2);
    }
}

/// Hands the pages of freed heap memory back to the system. A large commit frees the write
/// buffers it held (up to 8 MiB) in whichever arena they came from; glibc returns only the top
/// of an arena by itself, so without this the daemon's peak grew by what one commit held after
/// another. Called after a commit of many megabytes: a walk of two arenas, a few `madvise`s.
pub fn release_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only returns free pages; it takes the allocator's locks itself.
    unsafe {
        libc::malloc_trim(0);
    }
}
