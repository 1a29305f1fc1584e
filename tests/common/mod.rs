//! A sandbox for end-to-end tests: the real `clawfs` binary with its own HOME, a state
//! directory and a store in temp dirs, real mounts, and cleanup that never leaves a mount behind.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

pub mod s3;

pub struct Sandbox {
    /// Extra environment for every command (passphrase, access keys).
    pub env: std::cell::RefCell<Vec<(String, String)>>,
    pub home: tempfile::TempDir,
    /// The state directory (`$HOME/.openclaw`).
    pub dir: PathBuf,
    /// The store.
    pub store: PathBuf,
}

/// A `file://` remote in a temp dir: the dir (removed when dropped) and its URL.
pub fn file_remote() -> (tempfile::TempDir, String) {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("file://{}", dir.path().display());
    (dir, url)
}

pub fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_clawfs"))
}

impl Sandbox {
    pub fn new() -> Sandbox {
        let home = tempfile::Builder::new()
            .prefix("clawfs-test-")
            .tempdir()
            .unwrap();
        let dir = home.path().join(".openclaw");
        std::fs::create_dir_all(&dir).unwrap();
        let dir = dir.canonicalize().unwrap();
        let store = home.path().join("store");
        Sandbox {
            env: Default::default(),
            home,
            dir,
            store,
        }
    }

    /// A `clawfs` command in the sandbox.
    pub fn cmd(&self) -> Command {
        let mut c = Command::new(bin());
        c.env("HOME", self.home.path())
            .env_remove("XDG_DATA_HOME")
            .env("OPENCLAW_STATE_DIR", &self.dir)
            .env("CLAWFS_LOG", "warn")
            // Tests derive many keys: cheap scrypt (the product's default costs ~100 ms each).
            .env("CLAWFS_SCRYPT_LOG_N", "10")
            .env_remove("CLAWFS_PASSPHRASE")
            .envs(
                self.env
                    .borrow()
                    .iter()
                    .map(|(k, v)| (k.clone(), v.clone())),
            )
            .arg("--store")
            .arg(&self.store)
            .stdin(Stdio::null());
        c
    }

    /// Sets an environment variable for every later command.
    pub fn set_env(&self, k: &str, v: &str) {
        self.env.borrow_mut().push((k.to_string(), v.to_string()));
    }

    /// Runs `clawfs ARGS`; panics with its output unless it succeeds.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.cmd().args(args).output().unwrap();
        assert!(
            out.status.success(),
            "clawfs {args:?} failed: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            String::from_utf8_lossy(&out.stdout)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// Runs `clawfs ARGS`; panics unless it fails; returns its stderr.
    pub fn fails(&self, args: &[&str]) -> String {
        let out = self.cmd().args(args).output().unwrap();
        assert!(
            !out.status.success(),
            "clawfs {args:?} should have failed: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        String::from_utf8(out.stderr).unwrap()
    }

    pub fn raw(&self, args: &[&str]) -> Output {
        self.cmd().args(args).output().unwrap()
    }

    /// JSON lines of `clawfs --json ARGS`.
    pub fn json(&self, args: &[&str]) -> Vec<serde_json::Value> {
        let mut a = vec!["--json"];
        a.extend_from_slice(args);
        self.ok(&a)
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    pub fn mount(&self) {
        let d = self.dir.to_str().unwrap().to_string();
        self.ok(&["mount", &d]);
        assert!(self.is_mounted(), "not mounted after clawfs mount");
    }

    pub fn unmount(&self) {
        let d = self.dir.to_str().unwrap().to_string();
        self.ok(&["unmount", &d]);
        assert!(!self.is_mounted());
    }

    pub fn is_mounted(&self) -> bool {
        let m = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
        m.lines().any(|l| {
            let f: Vec<&str> = l.split(' ').collect();
            f.get(4) == Some(&self.dir.to_str().unwrap()) && l.contains(" - fuse.clawfs ")
        })
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.join(rel)
    }

    pub fn write(&self, rel: &str, data: &[u8]) {
        let p = self.path(rel);
        if let Some(parent) = p.parent() {
            std::fs::create_dir_all(parent).unwrap();
        }
        std::fs::write(p, data).unwrap();
    }

    pub fn read(&self, rel: &str) -> Vec<u8> {
        std::fs::read(self.path(rel)).unwrap()
    }

    /// Asserts that the history's newest version of `rel` is the file as it is now.
    pub fn assert_newest_is_the_file(&self, rel: &str) {
        let stored = self.raw(&["cat", rel]);
        assert_ok(&stored);
        assert!(
            stored.stdout == self.read(rel),
            "{rel}: the newest version is not the file"
        );
    }

    /// The newest moment, after the daemon closed the current epoch.
    pub fn settle(&self) -> u64 {
        // `mark`-free way to close the epoch: status commits nothing, so wait out the 1 s age.
        std::thread::sleep(Duration::from_millis(1200));
        self.head()
    }

    pub fn head(&self) -> u64 {
        let v = self.json(&["log", "--limit", "1"]);
        v.first().map(|e| e["seq"].as_u64().unwrap()).unwrap_or(0)
    }

    /// How many files the mount serves passed through to the kernel now (`status`); None when
    /// passthrough is off.
    pub fn passed_through(&self) -> Option<u64> {
        self.json(&["status"])[0]["passthrough"].as_u64()
    }

    /// Runs a shell command with `cwd` = the state directory; panics on failure.
    pub fn sh(&self, script: &str) -> String {
        sh_in(&self.dir, script)
    }
}

/// Panics with the program's stderr unless it succeeded.
pub fn assert_ok(out: &Output) {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

pub fn sh_in(dir: &Path, script: &str) -> String {
    let out = Command::new("bash")
        .arg("-ec")
        .arg(script)
        .current_dir(dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "script failed: {script}\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        if self.is_mounted() {
            let _ = self
                .cmd()
                .args(["unmount", self.dir.to_str().unwrap()])
                .output();
            let deadline = Instant::now() + Duration::from_secs(10);
            while self.is_mounted() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(50));
            }
            if self.is_mounted() {
                let _ = Command::new("fusermount3")
                    .args(["-u", "-z"])
                    .arg(&self.dir)
                    .status();
            }
        }
    }
}

/// Lazily unmounts a second mount (another tree, a view) when dropped: a test that fails
/// before its `clawfs unmount` leaves nothing mounted behind.
pub struct LazyUnmount<'a>(pub &'a Path);

impl Drop for LazyUnmount<'_> {
    fn drop(&mut self) {
        let _ = Command::new("fusermount3")
            .args(["-u", "-z"])
            .arg(self.0)
            .stderr(Stdio::null())
            .status();
    }
}

/// Whether the tests run as root; a test of what only root can do says it is skipped otherwise
/// (CI runs as root).
pub fn root_or_skip(what: &str) -> bool {
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    if !root {
        eprintln!("skipped: {what} needs root");
    }
    root
}

/// Every process now, with its arguments (from `/proc/*/cmdline`).
pub fn processes() -> Vec<(u32, Vec<String>)> {
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| {
            let pid = e.file_name().to_str()?.parse().ok()?;
            let cmd = std::fs::read(e.path().join("cmdline")).ok()?;
            let args = cmd
                .split(|b| *b == 0)
                .filter(|a| !a.is_empty())
                .map(|a| String::from_utf8_lossy(a).into_owned())
                .collect();
            Some((pid, args))
        })
        .collect()
}

/// Waits until `f` holds, up to 20 s.
pub fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A python program that writes `n` transactions (inserts of ids 0..n in order, and random
/// updates) into a WAL database at `db` (`synchronous=NORMAL`), checkpointing often (each
/// checkpoint fsyncs, so each closes an epoch and gives a moment to check).
pub fn wal_writer(db: &str, n: u32, seed: u32, checkpoint_every: u32) -> String {
    format!(
        r#"
import sqlite3, random
c = sqlite3.connect("{db}")
c.execute("PRAGMA journal_mode=WAL"); c.execute("PRAGMA synchronous=NORMAL")
c.execute("PRAGMA wal_autocheckpoint=8")
c.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, pad TEXT)")
c.commit()
r = random.Random({seed})
for i in range({n}):
    c.execute("INSERT INTO t VALUES (?, ?)", (i, "p" * r.randint(10, 3000)))
    if r.random() < 0.3:
        c.execute("UPDATE t SET pad = ? WHERE id = ?", ("u" * r.randint(10, 500), r.randint(0, i)))
    c.commit()
    if i % {checkpoint_every} == {checkpoint_every} - 1:
        c.execute("PRAGMA wal_checkpoint(PASSIVE)")
c.close()
"#
    )
}

/// The database a [`wal_writer`] wrote at `db`, with its `-wal`, as of moment `at`, opened in
/// a scratch directory: `None` before it (or its table) existed; else its row count, once
/// `integrity_check` said ok and the rows were found to be a prefix of the inserts.
pub fn rows_at(sb: &Sandbox, db: &str, at: &str) -> Option<u64> {
    let work = tempfile::tempdir().unwrap();
    let main = sb.raw(&["cat", db, "--at", at]);
    if !main.status.success() {
        return None;
    }
    std::fs::write(work.path().join("db"), main.stdout).unwrap();
    let wal = sb.raw(&["cat", &format!("{db}-wal"), "--at", at]);
    if wal.status.success() {
        std::fs::write(work.path().join("db-wal"), wal.stdout).unwrap();
    }
    let out = Command::new("sqlite3")
        .arg(work.path().join("db"))
        .arg("PRAGMA integrity_check; SELECT count(*), coalesce(max(id) + 1, 0) FROM t;")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    if err.contains("no such table") {
        return None;
    }
    let mut lines = text.lines();
    assert_eq!(lines.next(), Some("ok"), "moment {at}: {text} {err}");
    let (count, next) = lines.next().unwrap().split_once('|').unwrap();
    assert_eq!(
        count, next,
        "moment {at}: rows are not a prefix of the inserts"
    );
    Some(count.parse().unwrap())
}

/// [`rows_at`] at each moment of `ats`, oldest first: each a clean cut, none with fewer rows
/// than the one before, the database never gone once it had rows. Returns the last count.
pub fn rows_grow(sb: &Sandbox, db: &str, ats: &[String]) -> u64 {
    let mut last = 0;
    for at in ats {
        match rows_at(sb, db, at) {
            None => assert_eq!(last, 0, "the database vanished at {at}"),
            Some(rows) => {
                assert!(
                    rows >= last,
                    "moment {at} has fewer rows than an earlier one"
                );
                last = rows;
            }
        }
    }
    last
}

/// A tmpfs of a given size, unmounted when dropped.
pub struct SmallFs(PathBuf);

impl SmallFs {
    pub fn mount(at: &Path, size: &str) -> SmallFs {
        std::fs::create_dir_all(at).unwrap();
        let st = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(at)
            .status()
            .unwrap();
        assert!(st.success(), "mounting a tmpfs at {}", at.display());
        SmallFs(at.to_path_buf())
    }
}

impl Drop for SmallFs {
    fn drop(&mut self) {
        // A failed test may leave a clawfs mount on top (its sandbox goes after): take
        // whatever is mounted there off, down to the tmpfs.
        let at = self.0.to_string_lossy().into_owned();
        for _ in 0..3 {
            let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
            if !mounts
                .lines()
                .any(|l| l.split(' ').nth(4) == Some(at.as_str()))
            {
                break;
            }
            let _ = Command::new("umount").arg("-l").arg(&self.0).status();
        }
    }
}

/// Fills the file system holding `dir` with the file `ballast`, to `leave` bytes from full (as
/// something else filling the disk would).
pub fn fill_disk(dir: &Path, ballast: &Path, leave: u64) {
    let out = Command::new("df")
        .args(["-B1", "--output=avail"])
        .arg(dir)
        .output()
        .unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    let avail: u64 = text.lines().nth(1).unwrap().trim().parse().unwrap();
    let st = Command::new("fallocate")
        .args(["-l", &(avail - leave).to_string()])
        .arg(ballast)
        .status()
        .unwrap();
    assert!(st.success());
}
