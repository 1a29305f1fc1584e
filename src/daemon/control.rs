//! The control socket: how the CLI reaches a running daemon (invariant 8).
//!
//! `<store>/control.sock`, mode 0600. A client sends one JSON line, `{"argv": [...], "cwd":
//! "..."}`: the same command line it was given. The daemon parses it with the same clap
//! definition, runs the same command code against its store and recorder, and streams the
//! output back in frames: a kind byte (`o` output, `e` error message, `x` exit code), a
//! big-endian u32 length, and the payload. So live and offline commands cannot drift apart.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// What a client asks.
#[derive(Serialize, Deserialize, Debug)]
pub struct Request {
    /// The command line, as given to the CLI.
    pub argv: Vec<String>,
    /// The client's working directory (relative paths are taken from it).
    pub cwd: PathBuf,
    /// The repository passphrase, when the client has one (the socket is owner-only).
    #[serde(default)]
    pub passphrase: Option<String>,
}

/// Output going back to the client as `o` frames.
pub struct FrameWriter<'a> {
    stream: &'a UnixStream,
    buf: Vec<u8>,
}

impl<'a> FrameWriter<'a> {
    /// Frames over `stream`.
    pub fn new(stream: &'a UnixStream) -> Self {
        FrameWriter {
            stream,
            buf: Vec::with_capacity(64 << 10),
        }
    }

    /// Sends a frame of `kind`.
    pub fn frame(&mut self, kind: u8, payload: &[u8]) -> io::Result<()> {
        self.flush()?;
        send_frame(self.stream, kind, payload)
    }
}

fn send_frame(mut s: &UnixStream, kind: u8, payload: &[u8]) -> io::Result<()> {
    let mut head = [0u8; 5];
    head[0] = kind;
    head[1..].copy_from_slice(&(payload.len() as u32).to_be_bytes());
    s.write_all(&head)?;
    s.write_all(payload)
}

impl Write for FrameWriter<'_> {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        self.buf.extend_from_slice(data);
        if self.buf.len() >= 64 << 10 {
            self.flush()?;
        }
        Ok(data.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        if !self.buf.is_empty() {
            let b = std::mem::take(&mut self.buf);
            send_frame(self.stream, b'o', &b)?;
        }
        Ok(())
    }
}

/// Binds the socket (replacing a stale one), owner-only.
pub fn bind(path: &Path) -> io::Result<UnixListener> {
    let _ = std::fs::remove_file(path);
    let l = UnixListener::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(l)
}

/// The process at the other end of `stream`, as the kernel saw it connect.
pub fn peer_pid(stream: &UnixStream) -> Option<u32> {
    use std::os::fd::AsRawFd;
    // SAFETY: an all-zero ucred is valid; getsockopt writes at most `len` bytes into it.
    let mut cred: libc::ucred = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: as above; the fd is the stream's, open for the call.
    let r = unsafe {
        libc::getsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&mut cred as *mut libc::ucred).cast(),
            &mut len,
        )
    };
    (r == 0 && cred.pid > 0).then_some(cred.pid as u32)
}

/// Reads a request from a connection.
pub fn read_request(stream: &UnixStream) -> io::Result<Request> {
    let mut line = String::new();
    BufReader::new(stream).read_line(&mut line)?;
    serde_json::from_str(&line).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}

/// What came of forwarding a command.
pub enum Forwarded {
    /// The daemon ran it; its exit code.
    Ran(i32),
    /// No daemon listens there.
    NoDaemon,
}

/// Sends a command line to the daemon listening at `path` and copies its output to ours.
pub fn forward(path: &Path, req: &Request) -> io::Result<Forwarded> {
    let mut s = match UnixStream::connect(path) {
        Ok(s) => s,
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused
            ) =>
        {
            return Ok(Forwarded::NoDaemon)
        }
        Err(e) if e.kind() == io::ErrorKind::PermissionDenied => {
            return Err(io::Error::new(
                e.kind(),
                format!(
                    "permission denied on {}: the daemon belongs to another user; run as that user",
                    path.display()
                ),
            ))
        }
        Err(e) => return Err(e),
    };
    let mut line = serde_json::to_vec(req).expect("encode");
    line.push(b'\n');
    s.write_all(&line)?;
    let stdout = io::stdout();
    let mut out = stdout.lock();
    loop {
        let mut head = [0u8; 5];
        if let Err(e) = s.read_exact(&mut head) {
            if e.kind() == io::ErrorKind::UnexpectedEof {
                return Err(io::Error::other("the daemon hung up before answering"));
            }
            return Err(e);
        }
        let len = u32::from_be_bytes(head[1..].try_into().expect("4 bytes")) as usize;
        let mut payload = vec![0u8; len];
        s.read_exact(&mut payload)?;
        match head[0] {
            b'o' => out.write_all(&payload)?,
            b'e' => {
                out.flush()?;
                eprintln!("clawfs: {}", String::from_utf8_lossy(&payload));
            }
            b'x' => {
                out.flush()?;
                let code = payload
                    .get(..4)
                    .map(|b| i32::from_be_bytes(b.try_into().expect("4")))
                    .unwrap_or(1);
                return Ok(Forwarded::Ran(code));
            }
            _ => return Err(io::Error::other("bad frame from the daemon")),
        }
    }
}
