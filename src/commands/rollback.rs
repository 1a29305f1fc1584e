//! `clawfs rollback --to WHEN [PATH…]`: preview, safety checks, and the rollback itself.

use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{bail, Result};

use crate::commands::diff::{read_text, write_patch};
use crate::commands::{human, shown, Ctx};
use crate::config::StoreConfig;
use crate::daemon::recorder_thread::Recording;
use crate::fs::filter::Filter;
use crate::ids::SessionId;
use crate::realfs::RealTree;
use crate::relpath::RelPath;
use crate::store::catalog::{now_ns, NodeKind, SessionInfo};
use crate::store::rollback::{
    apply_rollback, begin_rollback, put_back, record_rollback, ActionKind, Applied, Plan,
};
use crate::when::{ago, show_time};

/// Runs `rollback`.
pub fn run(
    ctx: &mut Ctx,
    to: &str,
    paths: &[PathBuf],
    preview: bool,
    patch: bool,
    include_secrets: bool,
    force: bool,
) -> Result<()> {
    let scope: Vec<RelPath> = paths.iter().map(|p| ctx.rel(p)).collect::<Result<_>>()?;
    // The plan must be made against the tree as it really is: live, commit what is pending
    // (and capture files written passed through, which the daemon does not see); offline,
    // capture first whatever changed while nothing was mounted, so that it too can be got
    // back through the safety mark.
    let mut offline = None;
    match ctx.live {
        Some(l) => {
            l.overlay.capture_passed_through(&l.rec);
            l.rec.commit(true, true)
        }
        None if !preview => offline = Some(offline_recording(ctx, "rollback")?),
        None => {}
    }
    let target = ctx.when(to)?;
    let plan = ctx.store.plan_rollback(target, &scope, include_secrets)?;
    if preview {
        return show_plan(ctx, &plan, patch);
    }
    if plan.actions.is_empty() {
        if ctx.json {
            return ctx.emit_json(&serde_json::json!({"applied": 0, "target": target.0}));
        }
        writeln!(ctx.out, "nothing to do: already as at #{target}")?;
        return Ok(());
    }
    let busy = busy_writers(ctx, &plan);
    if !busy.is_empty() && !force {
        let list: Vec<String> = busy
            .iter()
            .map(|w| format!("{} (pid {} {})", w.path, w.pid, w.command))
            .collect();
        bail!(
            "refusing to replace files open for writing: {}; stop those processes (or pass --force)",
            list.join(", ")
        );
    }
    let applied: Applied = match (ctx.live, offline.as_mut()) {
        (Some(l), _) => {
            let real = format!("/proc/self/fd/{}", l.root.as_raw_fd());
            // Put back through the mount, so that the kernel and programs watching the tree
            // see the changes (see `realfs`); behind it only if the mount cannot be reached.
            let through = mount_reachable(&ctx.dir, &l.root);
            let tree = match &through {
                Ok(()) => RealTree::through(real, &ctx.dir),
                Err(why) => {
                    tracing::warn!(dir = %ctx.dir.display(), why = %why, "rolling back behind the mount: programs watching the tree are not told");
                    RealTree::new(real)
                }
            };
            // What a rollback behind the mount replaces or removes, the kernel may still cache.
            let mut known = Vec::new();
            if !tree.is_through() {
                for a in &plan.actions {
                    if let Ok(p) = RelPath::new(&a.path) {
                        known.extend(l.overlay.pin_tree(&p));
                    }
                }
            }
            let gone = || anyhow::anyhow!("the recorder thread is gone");
            // Not on the recorder's thread: requests through the mount may wait for it.
            let publishing = l.overlay.rollback_through_mount();
            let p = plan.clone();
            let safety = l
                .rec
                .call(move |r| begin_rollback(&mut r.rec, &p))
                .ok_or_else(gone)??;
            let put = put_back(&ctx.store, &plan, &tree);
            let p = plan.clone();
            let r = l
                .rec
                .call(move |r| record_rollback(&mut r.rec, &p, safety, put))
                .ok_or_else(gone)?;
            drop(publishing);
            if !tree.is_through() {
                for a in &plan.actions {
                    if let Ok(p) = RelPath::new(&a.path) {
                        l.overlay.invalidate(&p);
                        if let Some(shm) = p.with_suffix("-shm") {
                            l.overlay.invalidate(&shm);
                        }
                    }
                }
                for ino in known {
                    l.overlay.attrs_changed(ino);
                }
            }
            r?
        }
        (None, Some(rec)) => apply_rollback(&mut rec.rec, &plan, &RealTree::new(&ctx.dir))?,
        (None, None) => unreachable!("offline recording made above"),
    };
    if ctx.json {
        return ctx.emit_json(&applied);
    }
    writeln!(
        ctx.out,
        "rolled back {} path(s) to #{target}, recorded as #{}",
        applied.applied, applied.seq
    )?;
    for k in &applied.kept {
        writeln!(ctx.out, "kept {k}/: it holds files that are not versioned")?;
    }
    writeln!(
        ctx.out,
        "undo with: clawfs rollback --to {} --yes",
        applied.safety_mark
    )?;
    Ok(())
}

/// Whether `dir`, in this process, is the mount laid over the real directory `root`: a FUSE
/// file system whose root is the same directory (the overlay shows the real inode numbers).
fn mount_reachable(dir: &std::path::Path, root: &std::os::fd::OwnedFd) -> Result<(), String> {
    const FUSE_SUPER_MAGIC: i64 = 0x6573_5546;
    let st = crate::sys::statfs_path(dir).map_err(|e| format!("statfs: {e}"))?;
    if st.f_type as i64 != FUSE_SUPER_MAGIC {
        return Err("not a FUSE mount".into());
    }
    let seen = std::fs::metadata(dir).map_err(|e| format!("stat: {e}"))?;
    let real = crate::sys::fstat(root.as_raw_fd()).map_err(|e| format!("fstat: {e}"))?;
    use std::os::unix::fs::MetadataExt;
    if seen.ino() != real.st_ino {
        return Err("another file system is mounted there".into());
    }
    Ok(())
}

/// A recorder for a command that writes while nothing is mounted, with the real tree's
/// changes since the last mount already captured.
pub fn offline_recording(ctx: &Ctx, kind: &str) -> Result<Recording> {
    let session = SessionId::random();
    ctx.store.put_session(&SessionInfo {
        id: session,
        kind: kind.into(),
        started_ns: now_ns(),
        ended_ns: None,
        pid: std::process::id(),
    })?;
    let cfg = StoreConfig::load(ctx.store.dir())?;
    let root = Arc::new(
        crate::sys::open_dir(&ctx.dir)
            .map_err(|e| anyhow::anyhow!("cannot open {}: {e}", ctx.dir.display()))?,
    );
    let rec = ctx.store.recorder(session)?;
    let mut r = Recording::new(rec, root, Filter::new(&cfg.ignore)?);
    r.import_real(&RelPath::root());
    r.commit(true);
    Ok(r)
}

fn busy_writers(ctx: &Ctx, plan: &Plan) -> Vec<crate::procs::Writer> {
    let mut all = crate::procs::writers_under(&ctx.dir);
    if let Some(l) = ctx.live {
        for w in l.overlay.open_writers() {
            all.push(crate::procs::Writer {
                pid: w.pid,
                command: w.command,
                path: w.path,
            });
        }
    }
    let touches = |p: &str| {
        plan.actions.iter().any(|a| {
            p == a.path
                || p.strip_prefix(a.path.as_str()).is_some_and(|rest| {
                    rest.starts_with('/') || ["-wal", "-shm", "-journal"].contains(&rest)
                })
        })
    };
    let mut busy: Vec<_> = all.into_iter().filter(|w| touches(&w.path)).collect();
    busy.sort_by(|a, b| (a.pid, &a.path).cmp(&(b.pid, &b.path)));
    busy.dedup();
    busy
}

fn show_plan(ctx: &mut Ctx, plan: &Plan, patch: bool) -> Result<()> {
    if ctx.json {
        return ctx.emit_json(plan);
    }
    let when = ctx
        .store
        .epoch(plan.target)?
        .map(|e| format!("{}, {}", show_time(e.time_ns), ago(e.time_ns)))
        .unwrap_or_default();
    if plan.actions.is_empty() {
        writeln!(
            ctx.out,
            "nothing to do: already as at #{} ({when})",
            plan.target
        )?;
    } else {
        writeln!(ctx.out, "rollback to #{} ({when}) would:", plan.target)?;
    }
    for a in &plan.actions {
        let slash = if a.kind == NodeKind::Dir { "/" } else { "" };
        let sizes = match a.action {
            ActionKind::Remove => human(a.size_now.unwrap_or(0)),
            ActionKind::Recreate => human(a.size_then.unwrap_or(0)),
            ActionKind::Restore => format!(
                "{} -> {}",
                human(a.size_now.unwrap_or(0)),
                human(a.size_then.unwrap_or(0))
            ),
        };
        let verb = match a.action {
            ActionKind::Remove => "remove",
            ActionKind::Recreate => "recreate",
            ActionKind::Restore => "restore",
        };
        let link = match &a.link_to {
            Some(first) => format!(", a hard link to {}", shown(first)),
            None => String::new(),
        };
        writeln!(
            ctx.out,
            "  {verb:<9} {}{slash}  ({sizes}{link})",
            shown(&a.path)
        )?;
    }
    if !plan.skipped_secrets.is_empty() {
        writeln!(
            ctx.out,
            "left alone (secrets; name them or pass --include-secrets): {}",
            plan.skipped_secrets
                .iter()
                .map(|p| shown(p))
                .collect::<Vec<_>>()
                .join(", ")
        )?;
    }
    if patch {
        for a in plan.actions.iter().filter(|a| a.kind == NodeKind::File) {
            let p = RelPath::new(&a.path)?;
            let now = read_text(ctx, &p, plan.head, a.action != ActionKind::Recreate);
            let then = read_text(ctx, &p, plan.target, a.action != ActionKind::Remove);
            write_patch(ctx.out, &a.path, &a.path, now, then)?;
        }
    }
    Ok(())
}
