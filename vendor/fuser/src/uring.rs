//! FUSE over io_uring (Linux 6.14+, with the `fuse` module's `enable_uring` parameter on).
//!
//! The kernel keeps one request queue per possible CPU and puts each request on the queue of
//! the CPU its caller runs on. Ring entries registered on that queue receive requests as the
//! completions of io_uring commands; a reply goes back through the same entry, in the command
//! that also fetches the entry's next request. The threads serving a queue are bound to its CPU,
//! so a request and its reply never wake a thread on another CPU: on a virtual machine whose
//! idle CPUs halt, that wake-up costs more than the request itself.
//!
//! Requests only start coming through the rings once every queue has an entry; until then, and
//! always for FORGET, INTERRUPT and notifications, the device is used as before. Each thread
//! owns one ring with one entry and serves it synchronously: a reply made from another thread
//! is waited for before the entry is committed.
//!
//! An entry's payload buffer must hold the largest request or reply (`max_write`, 1 MiB for
//! clawfs), and each request is copied once more into a buffer shaped as the device delivers
//! it. Two entries per CPU would otherwise keep 2 MiB each resident for good once a large write
//! or read has filled them: 64 MiB on a 16-CPU machine. So an entry that served more than
//! [`RELEASE_ABOVE`] bytes gives both buffers' memory back once it has waited [`IDLE`] without a
//! request. The kernel writes into the buffers only from the entry's own thread: a request is
//! copied in by the thread's task work, which `IORING_SETUP_DEFER_TASKRUN` runs only inside the
//! thread's own waits in `io_uring_enter` (with `COOP_TASKRUN` it could run on the way out of
//! any system call, such as the `madvise` that gives the memory back, and a request copied in
//! just before it would be wiped). So while the thread runs in user space with no completion
//! pending, nothing touches them.

use std::io;
use std::io::IoSlice;
use std::sync::Arc;
use std::sync::atomic::AtomicUsize;
use std::sync::atomic::Ordering;
use std::thread;
use std::thread::JoinHandle;

use io_uring::IoUring;
use io_uring::cqueue;
use io_uring::opcode;
use io_uring::squeue;
use io_uring::types;
use log::debug;
use log::error;
use log::warn;
use parking_lot::Condvar;
use parking_lot::Mutex;

use crate::Filesystem;
use crate::channel::ChannelSender;
use crate::reply::ReplySender;
use crate::request::RequestWithSender;
use crate::session::SessionEventLoop;

const CMD_REGISTER: u32 = 1;
const CMD_COMMIT_AND_FETCH: u32 = 2;
/// `struct fuse_in_header`.
const IN_HEADER: usize = 40;
/// `struct fuse_out_header`.
const OUT_HEADER: usize = 16;
/// `FUSE_URING_OP_IN_OUT_SZ`: room for the per-opcode header of a request.
const OP_IN: usize = 128;
/// A request or reply larger than this leaves an entry holding its buffers until it is idle.
const RELEASE_ABOVE: usize = 64 << 10;
/// How long an entry holding its buffers waits for a request before giving them back.
const IDLE: types::Timespec = types::Timespec::new().sec(1);

/// `struct fuse_uring_ent_in_out`.
#[repr(C)]
#[derive(Default)]
struct EntInOut {
    flags: u64,
    commit_id: u64,
    payload_sz: u32,
    padding: u32,
    reserved: u64,
}

/// `struct fuse_uring_req_header`: the in/out header, the per-opcode header, and the entry's
/// own fields.
#[repr(C)]
struct ReqHeader {
    in_out: [u8; 128],
    op_in: [u8; OP_IN],
    ent: EntInOut,
}

/// `struct fuse_uring_cmd_req`, in the command area of a 128-byte SQE.
#[repr(C)]
struct CmdReq {
    flags: u64,
    commit_id: u64,
    qid: u16,
    padding: [u8; 6],
}

/// The highest CPU number in a list such as `/sys/devices/system/cpu/possible` ("0-3,5"), and
/// whether `cpu` is in it.
fn cpu_list(text: &str) -> io::Result<Vec<(usize, usize)>> {
    text.trim()
        .split(',')
        .map(|part| {
            let (a, b) = part.split_once('-').unwrap_or((part, part));
            match (a.parse(), b.parse()) {
                (Ok(a), Ok(b)) if a <= b => Ok((a, b)),
                _ => Err(io::Error::other(format!("unreadable CPU list {text:?}"))),
            }
        })
        .collect()
}

fn read_cpus(what: &str) -> io::Result<Vec<(usize, usize)>> {
    cpu_list(&std::fs::read_to_string(format!(
        "/sys/devices/system/cpu/{what}"
    ))?)
}

/// The reply of the request an entry holds, written straight into the entry's buffers.
#[derive(Debug)]
struct Slot {
    /// The entry's header and payload buffers, valid while `open`.
    header: *mut ReqHeader,
    payload: *mut u8,
    payload_len: usize,
    /// A reply was written for the current request.
    replied: bool,
    /// The reply could not be written (too large for the entry): the request is answered EIO.
    failed: bool,
    /// The entry's thread waits for this request's reply; after it gives up a late reply is
    /// dropped.
    open: bool,
}

// SAFETY: the pointers are only dereferenced under the mutex, while the thread owning the
// buffers holds the slot open.
unsafe impl Send for Slot {}

/// Sends replies into a ring entry; handed to the filesystem inside each reply object.
#[derive(Debug, Clone)]
pub(crate) struct UringReply {
    shared: Arc<(Mutex<Slot>, Condvar)>,
    device: ChannelSender,
}

impl UringReply {
    pub(crate) fn device(&self) -> &ChannelSender {
        &self.device
    }

    pub(crate) fn send(&self, data: &[IoSlice<'_>]) -> io::Result<()> {
        let (lock, cond) = &*self.shared;
        let mut slot = lock.lock();
        if !slot.open || slot.replied {
            error!("a reply came after its ring entry moved on; dropped");
            return Err(io::Error::from_raw_os_error(libc::ENOENT));
        }
        let total: usize = data.iter().map(|d| d.len()).sum();
        if total < OUT_HEADER || total - OUT_HEADER > slot.payload_len {
            error!("a reply of {total} bytes does not fit its ring entry; answering EIO");
            slot.failed = true;
            slot.replied = true;
            cond.notify_all();
            return Err(io::Error::from_raw_os_error(libc::EINVAL));
        }
        // SAFETY: the slot is open, so the buffers are alive and the entry's thread does not
        // touch them until `replied` is set.
        unsafe {
            let header = &mut *slot.header;
            let mut at = 0usize;
            let mut out = 0usize;
            for d in data {
                let mut rest: &[u8] = d;
                if at < OUT_HEADER {
                    let n = rest.len().min(OUT_HEADER - at);
                    header.in_out[at..at + n].copy_from_slice(&rest[..n]);
                    at += n;
                    rest = &rest[n..];
                }
                if !rest.is_empty() {
                    std::ptr::copy_nonoverlapping(rest.as_ptr(), slot.payload.add(out), rest.len());
                    out += rest.len();
                    at += rest.len();
                }
            }
            header.ent.payload_sz = out as u32;
        }
        slot.replied = true;
        cond.notify_all();
        Ok(())
    }
}

/// The threads serving the rings, started.
pub(crate) struct Started {
    /// Queues: one per possible CPU.
    pub(crate) queues: usize,
    /// One per ring entry, to be joined: they end when the connection does.
    pub(crate) threads: Vec<JoinHandle<io::Result<()>>>,
    /// Why not every entry could be registered: the kernel then keeps every request on the
    /// device (it uses the rings only once every queue has an entry).
    pub(crate) error: Option<io::Error>,
}

/// Starts the threads serving the rings: `per_cpu` entries for each online CPU, bound to it, and
/// one for each possible CPU that is offline (the kernel starts using the rings only once every
/// queue has an entry). Returns once every entry is registered or failed to, with the first
/// failure.
pub(crate) fn start<FS: Filesystem + Send + Sync + 'static>(
    make_loop: impl Fn(String) -> SessionEventLoop<FS>,
    device: ChannelSender,
    fd: i32,
    payload_len: usize,
    per_cpu: usize,
    held: Arc<AtomicUsize>,
) -> io::Result<Started> {
    let possible = read_cpus("possible")?;
    let online = read_cpus("online").unwrap_or_else(|_| possible.clone());
    let queues = possible.iter().map(|&(_, b)| b + 1).max().unwrap_or(0);
    if queues > u16::MAX as usize {
        return Err(io::Error::other(format!("{queues} CPUs")));
    }
    let mut threads = Vec::new();
    let mut error = None;
    let (tx, rx) = std::sync::mpsc::channel::<io::Result<()>>();
    'spawn: for qid in 0..queues {
        let is_online = online.iter().any(|&(a, b)| (a..=b).contains(&qid));
        let entries = if is_online { per_cpu } else { 1 };
        for i in 0..entries {
            let name = format!("fuser-ring-{qid}-{i}");
            let se = make_loop(name.clone());
            let device = device.clone();
            let tx = tx.clone();
            let held = Held {
                total: held.clone(),
                mine: 0,
            };
            let spawned = thread::Builder::new().name(name).spawn(move || {
                serve(&se, device, fd, qid as u16, is_online, payload_len, held, &tx)
            });
            match spawned {
                Ok(t) => threads.push(t),
                Err(e) => {
                    error = Some(e);
                    break 'spawn;
                }
            }
        }
    }
    drop(tx);
    for _ in 0..threads.len() {
        let failed = match rx.recv() {
            Ok(Ok(())) => None,
            Ok(Err(e)) => Some(e),
            Err(_) => Some(io::Error::other("a ring thread ended before registering")),
        };
        if error.is_none() {
            error = failed;
        }
    }
    Ok(Started {
        queues,
        threads,
        error,
    })
}

fn bind_to_cpu(cpu: usize) {
    // SAFETY: a zeroed cpu_set_t is valid; CPU_SET and sched_setaffinity only write it/read it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        if libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &set) != 0 {
            debug!(
                "ring thread not bound to CPU {cpu}: {}",
                io::Error::last_os_error()
            );
        }
    }
}

fn command(
    fd: i32,
    op: u32,
    qid: u16,
    commit_id: u64,
    iov: Option<&[libc::iovec; 2]>,
) -> squeue::Entry128 {
    let req = CmdReq {
        flags: 0,
        commit_id,
        qid,
        padding: [0; 6],
    };
    let mut cmd = [0u8; 80];
    // SAFETY: CmdReq is plain data of 24 bytes.
    let bytes = unsafe {
        std::slice::from_raw_parts((&req as *const CmdReq).cast::<u8>(), size_of::<CmdReq>())
    };
    cmd[..bytes.len()].copy_from_slice(bytes);
    let mut b = opcode::UringCmd80::new(types::Fd(fd), op).cmd(cmd);
    if let Some(iov) = iov {
        b = b.addr(Some(iov.as_ptr() as u64));
    }
    let entry = b.build();
    match iov {
        // The register command names its two buffers in `len`, which `UringCmd80` leaves 0.
        Some(_) => with_len(entry, 2),
        None => entry,
    }
}

/// Sets the `len` field (bytes 24..28 of the SQE).
fn with_len(entry: squeue::Entry128, len: u32) -> squeue::Entry128 {
    const _: () = assert!(size_of::<squeue::Entry128>() == 128);
    // SAFETY: `Entry128` is `repr(C)` over two `io_uring_sqe` halves; `len` is the u32 at
    // offset 24 of the first.
    unsafe {
        let mut raw: [u8; 128] = std::mem::transmute(entry);
        raw[24..28].copy_from_slice(&len.to_ne_bytes());
        std::mem::transmute(raw)
    }
}

fn serve<FS: Filesystem>(
    se: &SessionEventLoop<FS>,
    device: ChannelSender,
    fd: i32,
    qid: u16,
    bind: bool,
    payload_len: usize,
    mut held: Held,
    registered: &std::sync::mpsc::Sender<io::Result<()>>,
) -> io::Result<()> {
    if bind {
        bind_to_cpu(qid as usize);
    }
    // Dropped after the ring (declared before it): the kernel is done with them by then.
    let bufs = match Buffers::new(payload_len) {
        Ok(b) => b,
        Err(e) => {
            let _ = registered.send(Err(e));
            return Ok(());
        }
    };
    let header = bufs.header;
    let iov = [
        libc::iovec {
            iov_base: header.cast(),
            iov_len: size_of::<ReqHeader>(),
        },
        libc::iovec {
            iov_base: bufs.payload.cast(),
            iov_len: payload_len,
        },
    ];
    // Task work (where the kernel copies a request into the buffers) runs only inside this
    // thread's `io_uring_enter` waits, never on the way out of another system call: giving the
    // buffers back (see the module doc) relies on it.
    let mut ring = match IoUring::<squeue::Entry128, cqueue::Entry>::builder()
        .setup_single_issuer()
        .setup_defer_taskrun()
        .build(2)
    {
        Ok(r) => r,
        Err(e) => {
            let _ = registered.send(Err(e));
            return Ok(());
        }
    };
    let shared = Arc::new((
        Mutex::new(Slot {
            header,
            payload: bufs.payload,
            payload_len,
            replied: false,
            failed: false,
            open: false,
        }),
        Condvar::new(),
    ));
    // A failed registration completes at once; a good one completes with the first request.
    let register = command(fd, CMD_REGISTER, qid, 0, Some(&iov));
    push(&mut ring, &register)?;
    if let Err(e) = ring.submit() {
        let _ = registered.send(Err(e));
        return Ok(());
    }
    let mut ready = ring.completion().next();
    if let Some(c) = &ready {
        if c.result() < 0 {
            let _ = registered.send(Err(io::Error::from_raw_os_error(-c.result())));
            return Ok(());
        }
    }
    let _ = registered.send(Ok(()));
    loop {
        let cqe = match ready.take() {
            Some(c) => c,
            None if held.mine > 0 => match wait_one(&mut ring, Some(&IDLE))? {
                Some(c) => c,
                None => {
                    // Idle, and no request was copied in (its completion would be pending).
                    bufs.release();
                    held.set(0);
                    continue;
                }
            },
            None => match wait_one(&mut ring, None)? {
                Some(c) => c,
                None => continue,
            },
        };
        let res = cqe.result();
        if res < 0 {
            match -res {
                libc::ENOTCONN | libc::ECANCELED | libc::ENODEV | libc::ECONNABORTED => {
                    return Ok(());
                }
                e => {
                    warn!(
                        "ring entry on CPU {qid} failed ({}); registering it again",
                        io::Error::from_raw_os_error(e)
                    );
                    push(&mut ring, &register)?;
                    continue;
                }
            }
        }
        // SAFETY: between a completion and the next command, the kernel leaves the buffers
        // alone, and no reply is being written (the slot is closed).
        let h = unsafe { &*header };
        let commit_id = h.ent.commit_id;
        let payload_sz = h.ent.payload_sz as usize;
        let len = u32::from_ne_bytes(h.in_out[0..4].try_into().unwrap()) as usize;
        let op_len = len.wrapping_sub(IN_HEADER + payload_sz);
        if len < IN_HEADER + payload_sz || op_len > OP_IN || payload_sz > payload_len {
            error!("malformed request on ring {qid}: length {len}, payload {payload_sz}");
            let next = commit_error(header, fd, qid, commit_id, libc::EIO);
            push(&mut ring, &next)?;
            continue;
        }
        // SAFETY: the request buffer holds the longest request (checked above), and only this
        // thread uses it, for this request.
        let bytes = unsafe { std::slice::from_raw_parts_mut(bufs.request, len) };
        bytes[..IN_HEADER].copy_from_slice(&h.in_out[..IN_HEADER]);
        bytes[IN_HEADER..IN_HEADER + op_len].copy_from_slice(&h.op_in[..op_len]);
        // SAFETY: as for `h`; `payload_sz` was checked against the buffer's length.
        bytes[IN_HEADER + op_len..]
            .copy_from_slice(unsafe { std::slice::from_raw_parts(bufs.payload, payload_sz) });
        {
            let mut slot = shared.0.lock();
            slot.replied = false;
            slot.failed = false;
            slot.open = true;
        }
        let reply = ReplySender::Uring(UringReply {
            shared: shared.clone(),
            device: device.clone(),
        });
        let Some(req) = RequestWithSender::with_sender(reply, bytes) else {
            shared.0.lock().open = false;
            let next = commit_error(header, fd, qid, commit_id, libc::EIO);
            push(&mut ring, &next)?;
            continue;
        };
        // A panic must not take the entry with it: its queue would lose a server. A reply the
        // filesystem made on another thread, or will make, is waited for.
        let dispatched =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| req.dispatch(se)));
        let replied = {
            let (lock, cond) = &*shared;
            let mut slot = lock.lock();
            if dispatched.is_ok() {
                while !slot.replied {
                    cond.wait(&mut slot);
                }
            }
            slot.open = false;
            slot.replied && !slot.failed
        };
        // SAFETY: the slot is closed: no reply is being written.
        let reply_sz = unsafe { (*header).ent.payload_sz } as usize;
        if len.max(reply_sz) > RELEASE_ABOVE {
            held.set(bufs.len + bufs.request_len);
        }
        let next = if replied {
            command(fd, CMD_COMMIT_AND_FETCH, qid, commit_id, None)
        } else {
            if dispatched.is_err() {
                error!("a request panicked on ring {qid} before replying; answering EIO");
            }
            commit_error(header, fd, qid, commit_id, libc::EIO)
        };
        push(&mut ring, &next)?;
    }
}

fn push(
    ring: &mut IoUring<squeue::Entry128, cqueue::Entry>,
    e: &squeue::Entry128,
) -> io::Result<()> {
    // SAFETY: the buffers a command names outlive the ring: they belong to `serve`, which drops
    // the ring (tearing down the kernel's use of them) before them.
    unsafe { ring.submission().push(e) }.map_err(|_| io::Error::other("ring full"))
}

/// Submits what is queued and waits for one completion; with `idle`, for at most that long,
/// and then None if none came.
fn wait_one(
    ring: &mut IoUring<squeue::Entry128, cqueue::Entry>,
    idle: Option<&types::Timespec>,
) -> io::Result<Option<cqueue::Entry>> {
    loop {
        let waited = match idle {
            Some(t) => ring
                .submitter()
                .submit_with_args(1, &types::SubmitArgs::new().timespec(t)),
            None => ring.submit_and_wait(1),
        };
        match waited {
            Ok(_) => {}
            Err(e) if e.raw_os_error() == Some(libc::EINTR) => {}
            Err(e) if e.raw_os_error() == Some(libc::ETIME) => {
                // A completion that came as the wait ended is taken, not left behind.
                return Ok(ring.completion().next());
            }
            Err(e) => return Err(e),
        }
        if let Some(c) = ring.completion().next() {
            return Ok(Some(c));
        }
    }
}

/// This entry's share of [`Rings::buffers_held`](crate::Rings::buffers_held), taken back when
/// the entry ends.
struct Held {
    total: Arc<AtomicUsize>,
    mine: usize,
}

impl Held {
    fn set(&mut self, bytes: usize) {
        if bytes >= self.mine {
            self.total.fetch_add(bytes - self.mine, Ordering::Relaxed);
        } else {
            self.total.fetch_sub(self.mine - bytes, Ordering::Relaxed);
        }
        self.mine = bytes;
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        self.set(0);
    }
}

/// Commits an error reply for the request with `commit_id`, writing its header into
/// `header` (which no reply may be writing: the slot is closed).
fn commit_error(
    header: *mut ReqHeader,
    fd: i32,
    qid: u16,
    commit_id: u64,
    errno: i32,
) -> squeue::Entry128 {
    // SAFETY: the caller's slot is closed and the kernel is between commands.
    let header = unsafe { &mut *header };
    let unique = u64::from_ne_bytes(header.in_out[8..16].try_into().unwrap());
    header.in_out[..4].copy_from_slice(&(OUT_HEADER as u32).to_ne_bytes());
    header.in_out[4..8].copy_from_slice(&(-errno).to_ne_bytes());
    header.in_out[8..16].copy_from_slice(&unique.to_ne_bytes());
    header.ent.payload_sz = 0;
    command(fd, CMD_COMMIT_AND_FETCH, qid, commit_id, None)
}

/// An entry's buffers, which the kernel reads and writes through the ring and the entry's
/// [`UringReply`] writes replies into: reached through raw pointers only, never a reference
/// that outlives a step of the entry's thread.
struct Buffers {
    header: *mut ReqHeader,
    payload: *mut u8,
    len: usize,
    /// Each request as the device would deliver it (header, per-opcode header, payload),
    /// page-aligned, so aligned for the header.
    request: *mut u8,
    request_len: usize,
}

/// An anonymous private mapping of `len` bytes.
fn map(len: usize) -> io::Result<*mut u8> {
    // SAFETY: a new mapping at an address of the kernel's choosing.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    if p == libc::MAP_FAILED {
        return Err(io::Error::last_os_error());
    }
    Ok(p.cast())
}

impl Buffers {
    /// The payload and the request are mappings of their own, so that their memory can be
    /// given back whole.
    fn new(len: usize) -> io::Result<Buffers> {
        let request_len = IN_HEADER + OP_IN + len;
        let payload = map(len)?;
        let request = match map(request_len) {
            Ok(r) => r,
            Err(e) => {
                // SAFETY: mapped just above, unmapped once.
                unsafe { libc::munmap(payload.cast(), len) };
                return Err(e);
            }
        };
        let header = Box::into_raw(Box::new(ReqHeader {
            in_out: [0; 128],
            op_in: [0; OP_IN],
            ent: EntInOut::default(),
        }));
        Ok(Buffers {
            header,
            payload,
            len,
            request,
            request_len,
        })
    }

    /// Gives the memory of the payload and the request back to the system; they read as zeros
    /// after.
    fn release(&self) {
        for (p, len) in [(self.payload, self.len), (self.request, self.request_len)] {
            // SAFETY: a whole mapping made in `new`; nothing reads or writes it meanwhile (the
            // entry is idle, see the module doc).
            if unsafe { libc::madvise(p.cast(), len, libc::MADV_DONTNEED) } != 0 {
                debug!("ring buffer not given back: {}", io::Error::last_os_error());
            }
        }
    }
}

impl Drop for Buffers {
    fn drop(&mut self) {
        // SAFETY: made by `Box::into_raw` and `mmap` in `new`, freed once, here.
        unsafe {
            drop(Box::from_raw(self.header));
            libc::munmap(self.payload.cast(), self.len);
            libc::munmap(self.request.cast(), self.request_len);
        }
    }
}

const _: () = assert!(size_of::<EntInOut>() == 32);
const _: () = assert!(size_of::<ReqHeader>() == 288);
const _: () = assert!(size_of::<CmdReq>() == 24);
