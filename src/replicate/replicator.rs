//! The replicator: a named thread in the mount daemon that pushes to every remote.
//!
//! It is fed by a bounded channel of [`Msg`]s and by the store's commit notifications (a
//! channel of depth 1 that commits never block on). Its real queue is persistent: each
//! remote's cursor in the store, so whatever the channel drops, a restart or the next
//! notification picks up. Continuous remotes are pushed a couple of seconds after a burst of
//! epochs ends; scheduled ones at their cron times. Failures are retried with exponential
//! backoff and jitter, forever; the last error is kept for `status` until a push succeeds.

use std::collections::HashMap;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{bounded, select, Receiver, Sender};
use parking_lot::Mutex;

use crate::ids::Seq;
use crate::remote::OpendalRemote;
use crate::replicate::push::{self, PushReport};
use crate::replicate::repo::Repo;
use crate::replicate::settings::{RemoteEntry, Remotes, Schedule};
use crate::replicate::thin::{self, ThinReport};
use crate::replicate::{ReplicaError, Result};
use crate::store::catalog::now_ns;
use crate::store::Store;

/// Quiet time after the last epoch before a continuous push starts.
const SETTLE: Duration = Duration::from_secs(2);
/// Longest wait between retries after failures.
const MAX_BACKOFF: Duration = Duration::from_secs(300);

/// Messages to the replicator thread.
pub enum Msg {
    /// Push now (one remote or all); the reply, if asked for, comes when it is done.
    Push {
        /// Which remote (all when `None`).
        remote: Option<String>,
        /// Where the result goes.
        reply: Option<Sender<std::result::Result<Vec<PushReport>, String>>>,
    },
    /// Thin one remote ([`thin::thin`]); the reply comes when it is done.
    Thin {
        /// Which remote.
        remote: String,
        /// Report only.
        dry_run: bool,
        /// Where the result goes.
        reply: Sender<std::result::Result<ThinReport, String>>,
    },
    /// Re-read the remotes file; a passphrase unlocks remotes that are locked.
    Reload {
        /// The passphrase, if the caller has one.
        passphrase: Option<String>,
        /// Done.
        reply: Sender<std::result::Result<(), String>>,
    },
    /// Stop after the current push.
    Shutdown,
}

/// What `status` shows about a remote beyond its stored cursor.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct LiveState {
    /// Keys are not available (no passphrase given to the daemon).
    pub locked: Option<String>,
    /// A push is running.
    pub pushing: bool,
}

/// Handle to the replicator thread. Dropping it stops and joins the thread.
pub struct Replicator {
    tx: Sender<Msg>,
    live: Arc<Mutex<HashMap<String, LiveState>>>,
    join: Mutex<Option<JoinHandle<()>>>,
}

struct Target {
    entry: RemoteEntry,
    repo: Option<Repo>,
    dirty: Option<Instant>,
    next_cron_ns: Option<i64>,
    failures: u32,
    retry_at: Option<Instant>,
}

/// Opens a remote's repository with a passphrase, from its cached config when it has one.
pub fn connect(entry: &RemoteEntry, passphrase: &str) -> Result<Repo> {
    match &entry.config {
        Some(cfg) => {
            let spec = entry.spec_with_keys(Some(passphrase))?;
            Repo::from_cached(
                Arc::new(OpendalRemote::new(&spec)?),
                cfg.clone(),
                passphrase,
            )
        }
        None => Repo::open_entry(entry, passphrase),
    }
}

impl Replicator {
    /// Starts the thread for the store's remotes, unlocking them with `passphrase` if given.
    pub fn start(store: Arc<Store>, passphrase: Option<String>) -> Result<Replicator> {
        let (tx, rx) = bounded::<Msg>(16);
        let (ctx, crx) = bounded::<Seq>(1);
        store.set_commit_listener(ctx);
        let live: Arc<Mutex<HashMap<String, LiveState>>> = Default::default();
        let mut worker = Worker {
            store,
            targets: Vec::new(),
            live: live.clone(),
        };
        worker.reload(passphrase.as_deref())?;
        let join = std::thread::Builder::new()
            .name("clawfs-replicator".into())
            .spawn(move || worker.run(rx, crx))
            .map_err(|e| ReplicaError::Io(format!("starting the replicator: {e}")))?;
        Ok(Replicator {
            tx,
            live,
            join: Mutex::new(Some(join)),
        })
    }

    /// Sends a message (blocks only while the small queue is full).
    pub fn send(&self, m: Msg) -> Result<()> {
        self.tx
            .send(m)
            .map_err(|_| ReplicaError::Io("the replicator has stopped".into()))
    }

    /// The live state of each remote.
    pub fn live(&self) -> HashMap<String, LiveState> {
        self.live.lock().clone()
    }
}

impl Drop for Replicator {
    fn drop(&mut self) {
        let _ = self.tx.send(Msg::Shutdown);
        if let Some(j) = self.join.lock().take() {
            let _ = j.join();
        }
    }
}

struct Worker {
    store: Arc<Store>,
    targets: Vec<Target>,
    live: Arc<Mutex<HashMap<String, LiveState>>>,
}

impl Worker {
    fn reload(&mut self, passphrase: Option<&str>) -> Result<()> {
        let remotes = Remotes::load(self.store.dir())?;
        let mut old: HashMap<String, Target> = self
            .targets
            .drain(..)
            .map(|t| (t.entry.name.clone(), t))
            .collect();
        let mut live = self.live.lock();
        live.clear();
        for entry in remotes.remotes {
            let mut t = match old.remove(&entry.name) {
                Some(t) if t.entry.spec == entry.spec => Target { entry, ..t },
                _ => Target {
                    entry,
                    repo: None,
                    dirty: Some(Instant::now()),
                    next_cron_ns: None,
                    failures: 0,
                    retry_at: None,
                },
            };
            let mut state = LiveState::default();
            if t.repo.is_none() {
                match passphrase {
                    Some(p) => match connect(&t.entry, p) {
                        Ok(r) => t.repo = Some(r),
                        Err(e) => {
                            tracing::error!(remote = %t.entry.name, "cannot unlock: {e}");
                            state.locked = Some(e.to_string());
                        }
                    },
                    None => {
                        state.locked = Some(
                            "no passphrase given to the daemon (mount with CLAWFS_PASSPHRASE or --passphrase-file)".into(),
                        )
                    }
                }
            }
            t.next_cron_ns = t.entry.schedule.next_after(now_ns());
            live.insert(t.entry.name.clone(), state);
            self.targets.push(t);
        }
        Ok(())
    }

    fn run(mut self, rx: Receiver<Msg>, commits: Receiver<Seq>) {
        let idle = crossbeam_channel::never();
        loop {
            // With no remote there is nothing to push: commits do not wake the thread.
            let commits = if self.targets.is_empty() {
                &idle
            } else {
                &commits
            };
            select! {
                recv(rx) -> m => match m {
                    Err(_) | Ok(Msg::Shutdown) => return,
                    Ok(Msg::Reload { passphrase, reply }) => {
                        let r = crate::replicate::contained("reloading the remotes", || {
                            self.reload(passphrase.as_deref())
                        })
                        .map_err(|e| e.to_string());
                        let _ = reply.send(r);
                    }
                    Ok(Msg::Thin { remote, dry_run, reply }) => {
                        let _ = reply.send(self.thin(&remote, dry_run));
                    }
                    Ok(Msg::Push { remote, reply }) => {
                        let r = self.push_now(remote.as_deref());
                        match reply {
                            Some(tx) => { let _ = tx.send(r); }
                            None => if let Err(e) = r { tracing::error!("push: {e}") },
                        }
                    }
                },
                recv(commits) -> _ => {
                    for t in &mut self.targets {
                        t.dirty.get_or_insert_with(Instant::now);
                    }
                },
                default(Duration::from_millis(500)) => {},
            }
            self.push_due();
        }
    }

    fn push_now(&mut self, only: Option<&str>) -> std::result::Result<Vec<PushReport>, String> {
        let mut out = Vec::new();
        let mut errors = Vec::new();
        if let Some(name) = only {
            if !self.targets.iter().any(|t| t.entry.name == name) {
                return Err(format!(
                    "no remote named {name:?} (see `clawfs remote list`)"
                ));
            }
        }
        if self.targets.is_empty() {
            return Err("no remote configured: add one with `clawfs remote add NAME URL`".into());
        }
        for i in 0..self.targets.len() {
            if only.is_some_and(|n| n != self.targets[i].entry.name) {
                continue;
            }
            match self.push_one(i) {
                Ok(r) => out.push(r),
                Err(e) => errors.push(format!("{}: {e}", self.targets[i].entry.name)),
            }
        }
        if errors.is_empty() {
            Ok(out)
        } else {
            Err(errors.join("; "))
        }
    }

    fn thin(&mut self, name: &str, dry_run: bool) -> std::result::Result<ThinReport, String> {
        let i = self.unlocked(name).map_err(|e| e.to_string())?;
        self.live
            .lock()
            .entry(name.to_string())
            .or_default()
            .pushing = true;
        let t = &self.targets[i];
        let repo = t.repo.as_ref().expect("unlocked");
        let r = crate::replicate::contained("thinning", || {
            thin::thin(&self.store, repo, &t.entry, dry_run)
        });
        self.live
            .lock()
            .entry(name.to_string())
            .or_default()
            .pushing = false;
        r.map_err(|e| e.to_string())
    }

    /// The index of the remote named `name`, if it is unlocked.
    fn unlocked(&self, name: &str) -> Result<usize> {
        let Some(i) = self.targets.iter().position(|t| t.entry.name == name) else {
            return Err(ReplicaError::Usage(format!(
                "no remote named {name:?} (see `clawfs remote list`)"
            )));
        };
        if self.targets[i].repo.is_none() {
            let why = self
                .live
                .lock()
                .get(name)
                .and_then(|l| l.locked.clone())
                .unwrap_or_default();
            return Err(ReplicaError::Usage(format!(
                "remote {name} is locked: {why}"
            )));
        }
        Ok(i)
    }

    fn push_due(&mut self) {
        let now = Instant::now();
        for i in 0..self.targets.len() {
            let t = &self.targets[i];
            if t.repo.is_none() || t.retry_at.is_some_and(|r| now < r) {
                continue;
            }
            let due = match &t.entry.schedule {
                Schedule::Continuous => {
                    t.dirty.is_some_and(|d| now.duration_since(d) >= SETTLE) || t.retry_at.is_some()
                }
                Schedule::Cron(_) => t.next_cron_ns.is_some_and(|n| now_ns() >= n),
            };
            if due {
                if let Err(e) = self.push_one(i) {
                    tracing::warn!(remote = %self.targets[i].entry.name, "push failed, will retry: {e}");
                }
                let t = &mut self.targets[i];
                if let Schedule::Cron(_) = t.entry.schedule {
                    t.next_cron_ns = t.entry.schedule.next_after(now_ns());
                }
            }
        }
    }

    fn push_one(&mut self, i: usize) -> Result<PushReport> {
        let store = self.store.clone();
        let name = self.targets[i].entry.name.clone();
        self.unlocked(&name)?;
        let repo = self.targets[i].repo.as_ref().expect("unlocked");
        self.live.lock().entry(name.clone()).or_default().pushing = true;
        let started_head = store.head();
        let result = push::push(&store, repo, &self.targets[i].entry, &mut |_, _| {});
        let t = &mut self.targets[i];
        let mut live = self.live.lock();
        let l = live.entry(name.clone()).or_default();
        l.pushing = false;
        match &result {
            Ok(r) => {
                t.failures = 0;
                t.retry_at = None;
                if store.head() == started_head {
                    t.dirty = None;
                }
                tracing::info!(remote = %name, epochs = r.epochs, bytes = r.traffic.bytes_up, "pushed");
            }
            Err(e) => {
                t.failures += 1;
                let base = Duration::from_secs(1) * 2u32.saturating_pow(t.failures.min(9));
                let jitter = Duration::from_millis(rand::random::<u64>() % 1000);
                let wait = base.min(MAX_BACKOFF) + jitter;
                t.retry_at = Some(Instant::now() + wait);
                tracing::debug!(remote = %name, ?wait, "retrying after: {e}");
            }
        }
        result
    }
}
