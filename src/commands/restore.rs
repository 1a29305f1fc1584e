//! `clawfs restore [--from REMOTE] [--at WHEN] [--device ID] TARGET [PATH…]`.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, Result};

use crate::cli::RemoteOpts;
use crate::commands::push::bar;
use crate::commands::{human, Ctx};
use crate::config;
use crate::relpath::RelPath;
use crate::replicate::passphrase;
use crate::replicate::repo::Repo;
use crate::replicate::restore::{self, RestoreReport};
use crate::replicate::settings::{RemoteEntry, Remotes};
use crate::replicate::ReplicaError;
use crate::store::chunks::SpoolStore;
use crate::store::content::ChunkCache;
use crate::store::Store;

/// Chunks a restore from a remote keeps decoded: each is written once, so only chunk lists
/// shared by many files gain from the cache.
const RESTORE_CACHE_ENTRIES: usize = 64;

fn paths_of(paths: &[PathBuf]) -> Result<Vec<RelPath>> {
    paths
        .iter()
        .map(|p| {
            let s = p
                .to_str()
                .ok_or_else(|| anyhow::anyhow!("{} is not UTF-8", p.display()))?;
            Ok(RelPath::new(s.trim_start_matches("./"))?)
        })
        .collect()
}

fn say(json: bool, out: &mut dyn std::io::Write, r: &RestoreReport) -> Result<()> {
    if json {
        serde_json::to_writer(&mut *out, r)?;
        writeln!(out)?;
    } else {
        let links = match r.links {
            0 => String::new(),
            n => format!(", {n} further hard link(s)"),
        };
        writeln!(
            out,
            "restored moment {} into {}: {} files ({}), {} directories, {} symlinks{links}",
            r.seq,
            r.target.display(),
            r.files,
            human(r.bytes),
            r.dirs,
            r.symlinks
        )?;
    }
    Ok(())
}

/// Runs `restore` with a progress callback that draws a "restore" bar on a terminal.
fn write_tree(
    restore: impl FnOnce(&mut dyn FnMut(u64, u64)) -> Result<RestoreReport, ReplicaError>,
) -> Result<RestoreReport, ReplicaError> {
    let b = bar("restore");
    let r = restore(&mut |d, t| {
        if let Some(b) = &b {
            b.set_length(t);
            b.set_position(d);
        }
    });
    if let Some(b) = b {
        b.finish_and_clear();
    }
    r
}

/// From the local store (runs in the daemon when one is mounted).
pub fn run_local(ctx: &mut Ctx, at: &str, target: &Path, paths: &[PathBuf]) -> Result<()> {
    let seq = ctx.when(at)?;
    let target = config::absolute(target, &ctx.cwd);
    if target.starts_with(&ctx.dir) {
        bail!("restore into a directory outside {} (to put files back in place, use `clawfs rollback`)", ctx.dir.display());
    }
    let paths = paths_of(paths)?;
    let src = restore::TreeSource::store(&ctx.store);
    let r = write_tree(|progress| restore::restore_tree(&src, seq, &target, &paths, progress))?;
    crate::realfs::RealTree::new_batch(&target).sync_all()?;
    say(ctx.json, ctx.out, &r)
}

/// Resolves REMOTE (a configured name, else a URL) to an entry.
pub fn remote_entry(store_dir: &Path, from: &str, opts: &RemoteOpts) -> Result<RemoteEntry> {
    let remotes = Remotes::load(store_dir)?;
    if let Ok(e) = remotes.get(Some(from)) {
        return Ok(e.clone());
    }
    if !from.contains("://") {
        bail!(
            "no remote named {from:?} (give a configured name or a URL such as s3://bucket/prefix)"
        );
    }
    Ok(RemoteEntry {
        name: "origin".into(),
        spec: crate::commands::remote::spec_of(from, opts)?,
        schedule: crate::replicate::settings::Schedule::Continuous,
        include_secrets: false,
        access_key: None,
        config: None,
    })
}

/// Opens a remote's repository for reading.
pub fn open_repo(entry: &RemoteEntry, pass_file: Option<&Path>) -> Result<Repo> {
    let pass = passphrase::obtain(pass_file, &format!("remote {}", entry.name))?;
    Ok(Repo::open_entry(entry, &pass)?)
}

/// Runs `f` with a progress callback that draws a bar named `name` on a terminal.
pub(crate) fn with_bar<T>(name: &str, f: impl FnOnce(&mut dyn FnMut(&str, u64, u64)) -> T) -> T {
    let b = bar(name);
    let r = f(&mut |what, done, total| {
        if let Some(b) = &b {
            b.set_message(what.to_string());
            b.set_length(total);
            b.set_position(done);
        }
    });
    if let Some(b) = b {
        b.finish_and_clear();
    }
    r
}

/// A scratch directory under `$TMPDIR` (else `/tmp`), removed when dropped.
pub(crate) fn scratch(prefix: &str) -> Result<tempfile::TempDir> {
    Ok(tempfile::Builder::new().prefix(prefix).tempdir()?)
}

/// Clones `device`'s history from `repo` into a fresh store at `store_dir`; on failure what
/// the clone made there is removed again.
pub fn clone_store(
    repo: &Repo,
    remote_name: &str,
    device: &str,
    store_dir: &Path,
) -> Result<Arc<Store>> {
    let existed = store_dir.join("catalog").exists();
    let store = Store::open_or_create(store_dir)?;
    let r = with_bar("clone", |progress| {
        restore::clone_into(&store, repo, device, remote_name, progress)
    });
    if let Err(e) = r {
        drop(store);
        if !existed {
            // Only what the clone made: remotes.json and config.json stay.
            for d in ["catalog", "packs"] {
                let _ = std::fs::remove_dir_all(store_dir.join(d));
            }
        }
        return Err(e.into());
    }
    Ok(store)
}

/// `restore --from`: what to restore from where.
pub struct FromRemote<'a> {
    /// The remote (a configured name, or a URL).
    pub from: &'a str,
    /// Options of a remote given as a URL.
    pub opts: &'a RemoteOpts,
    /// Which device's history.
    pub device: Option<&'a str>,
    /// The moment.
    pub at: &'a str,
    /// Where to write.
    pub target: &'a Path,
    /// Only these paths.
    pub paths: &'a [PathBuf],
}

/// From a remote: clone the catalogue into a scratch store and the chunks into a spool beside
/// it, write the tree, drop both.
pub fn run_from(
    req: &FromRemote,
    store_dir: &Path,
    pass_file: Option<&Path>,
    json: bool,
    out: &mut dyn std::io::Write,
) -> Result<()> {
    let FromRemote {
        from,
        opts,
        device,
        at,
        target,
        paths,
    } = *req;
    let paths = paths_of(paths)?;
    let entry = remote_entry(store_dir, from, opts)?;
    let repo = open_repo(&entry, pass_file)?;
    let scratch = scratch("clawfs-restore-")?;
    // This machine's own history by default: its device id is read beside the store, which
    // the mount daemon may hold open.
    let own = crate::replicate::push::published_device_id(store_dir);
    let device = match device {
        Some(d) => d.to_string(),
        None => restore::pick_device(&repo, None, own.as_deref())?,
    };
    let t0 = std::time::Instant::now();
    let store = Store::open_or_create(&scratch.path().join("store"))?;
    let cloning = with_bar("clone", |progress| {
        restore::clone_catalog(&store, &repo, &device, progress)
    })?;
    tracing::debug!(elapsed = ?t0.elapsed(), "catalogue cloned into the scratch store");
    let seq = crate::when::resolve(&store, at)?;
    // Only the packs that hold what this tree is made of, whatever the length of the history
    // (`clawfs verify --remote` reads them all).
    let walked = restore::Walked::at(&store, seq, &paths)?;
    let wanted = walked.wanted();
    // Packs stream into a spool while the tree is written, each file as soon as its chunks are
    // in. Only CRCs at fetch time: the restore hashes every chunk as it writes it, and writes
    // into a staging directory that is thrown away if anything fails, fetching included.
    let spool = Arc::new(SpoolStore::new(scratch.path()));
    spool.expect(cloning.chunk_ids());
    let chunks = Arc::new(ChunkCache::new(spool.clone(), RESTORE_CACHE_ENTRIES));
    let (done_tx, done_rx) = crossbeam_channel::bounded(1);
    let fetched_packs = std::sync::atomic::AtomicU64::new(0);
    let r = std::thread::scope(|s| {
        s.spawn(|| {
            let r =
                restore::fetch_wanted(&store, &repo, &cloning, &spool, &wanted, &mut |_, _, _| {});
            spool.close(r.as_ref().err().map(|e| e.to_string()));
            let _ = done_tx.send(r);
        });
        // Every pack the tree needs must arrive intact before the tree is moved into place.
        let fetched = || match done_rx.recv() {
            Ok(r) => r.map(|n| fetched_packs.store(n, std::sync::atomic::Ordering::Relaxed)),
            Err(_) => Err(ReplicaError::Io("the pack fetcher stopped".into())),
        };
        let src = restore::TreeSource {
            store: &store,
            chunks: &chunks,
            verified: false,
            complete: &fetched,
        };
        let written =
            write_tree(|progress| restore::restore_walked(&src, seq, target, walked, progress));
        if written.is_err() && !spool.close(None) {
            // The fetch failed first, and that is why the write did: say why it failed.
            if let Ok(Err(e)) = done_rx.recv() {
                return Err(e);
            }
        }
        written
    })?;
    tracing::debug!(elapsed = ?t0.elapsed(), "tree written");
    let packs = fetched_packs.into_inner();
    drop(store);
    drop(scratch);
    tracing::debug!(elapsed = ?t0.elapsed(), "scratch store dropped");
    crate::realfs::RealTree::new_batch(target).sync_all()?;
    tracing::debug!(elapsed = ?t0.elapsed(), "synced");
    if json {
        serde_json::to_writer(
            &mut *out,
            &serde_json::json!({
                "restore": r,
                "traffic": repo.traffic(),
                "packs": {"fetched": packs, "of": cloning.pack_count()},
            }),
        )?;
        writeln!(out)?;
        return Ok(());
    }
    say(false, out, &r)?;
    let t = repo.traffic();
    writeln!(
        out,
        "downloaded {} in {} requests ({packs} of the repository's {} packs)",
        human(t.bytes_down),
        t.requests(),
        cloning.pack_count()
    )?;
    Ok(())
}
