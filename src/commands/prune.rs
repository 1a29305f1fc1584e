//! `clawfs prune`: thin old moments by the retention policy and reclaim the space they held.

use std::collections::BTreeSet;
use std::sync::Arc;

use anyhow::{anyhow, bail, Context, Result};

use crate::commands::{human, push as push_cmd, Ctx, LiveCtx};
use crate::ids::Seq;
use crate::replicate::push;
use crate::replicate::replicator::{connect, Msg, Replicator};
use crate::replicate::repo::Repo;
use crate::replicate::settings::{RemoteEntry, Remotes};
use crate::replicate::thin::{self, ThinReport};
use crate::store::prune::{pieces, Policy};
use crate::when::{parse_age, rfc3339, show_time};

/// The most moments a live prune folds in one call on the recorder thread, while writers wait:
/// a fold takes about 0.1 ms a moment, plus a walk of the kept moment's directories.
const FOLD_PIECE: usize = 1_000;

/// The policy from the command line's ages (`24h`, `7d`, `90d`), each at least the one before.
pub fn policy(keep_within: &str, hourly: &str, daily: &str) -> Result<Policy> {
    let age = |what: &str, s: &str| {
        parse_age(s).with_context(|| {
            format!("--{what} {s:?} is not an age: give one like 30m, 24h, 7d or 2w")
        })
    };
    let p = Policy {
        keep_within_ns: age("keep-within", keep_within)?,
        hourly_ns: age("hourly", hourly)?,
        daily_ns: age("daily", daily)?,
    };
    if p.hourly_ns < p.keep_within_ns || p.daily_ns < p.hourly_ns {
        bail!("--keep-within {keep_within}, --hourly {hourly} and --daily {daily} must not get shorter in that order");
    }
    Ok(p)
}

/// Who thins the remotes named: the daemon's replicator on a live mount, this process
/// otherwise. Made before anything is pruned, so that a remote named wrong, or one the
/// passphrase does not open, stops the command while nothing has changed.
enum Thinners {
    Daemon(Arc<Replicator>, Vec<String>),
    Here(Vec<(RemoteEntry, Repo)>),
}

impl Thinners {
    fn new(ctx: &Ctx, configured: &Remotes, names: &[String]) -> Result<Thinners> {
        let mut entries = Vec::new();
        for n in names {
            entries.push(configured.get(Some(n))?.clone());
        }
        if let Some(rep) = push_cmd::replicator(ctx)? {
            let live = rep.live();
            for n in names {
                if let Some(why) = live.get(n).and_then(|l| l.locked.clone()) {
                    bail!("remote {n} is locked: {why}; nothing was pruned");
                }
            }
            return Ok(Thinners::Daemon(rep, names.to_vec()));
        }
        if entries.is_empty() {
            return Ok(Thinners::Here(Vec::new()));
        }
        let pass = push_cmd::passphrase(ctx)?;
        let mut out = Vec::new();
        for e in entries {
            let repo = connect(&e, &pass)
                .map_err(|err| anyhow!("{}: {err}; nothing was pruned", e.name))?;
            out.push((e, repo));
        }
        Ok(Thinners::Here(out))
    }

    fn run(&self, ctx: &Ctx, dry_run: bool) -> Result<Vec<ThinReport>> {
        let mut out = Vec::new();
        match self {
            Thinners::Daemon(rep, names) => {
                for n in names {
                    let (tx, rx) = crossbeam_channel::bounded(1);
                    rep.send(Msg::Thin {
                        remote: n.clone(),
                        dry_run,
                        reply: tx,
                    })?;
                    let r = rx.recv().map_err(|_| anyhow!("the replicator stopped"))?;
                    out.push(r.map_err(|e| anyhow!("thinning {n} failed: {e}"))?);
                }
            }
            Thinners::Here(repos) => {
                for (entry, repo) in repos {
                    let r = thin::thin(&ctx.store, repo, entry, dry_run);
                    out.push(r.map_err(|e| anyhow!("thinning {} failed: {e}", entry.name))?);
                }
            }
        }
        Ok(out)
    }
}

/// Runs `step` on the live mount's recorder thread once what was pending is committed, so that
/// nothing is recorded meanwhile and every stored chunk is named.
fn quiesced<R: Send + 'static>(
    l: &LiveCtx,
    step: impl FnOnce() -> Result<R> + Send + 'static,
) -> Result<R> {
    l.rec
        .call(move |r| {
            r.commit(true);
            if !r.rec.pending_paths().is_empty() {
                bail!("changes are pending that could not be committed (see `clawfs status`)");
            }
            step()
        })
        .ok_or_else(|| anyhow!("the recorder thread is gone"))?
}

/// Runs `prune`.
pub fn run(ctx: &mut Ctx, policy: &Policy, dry_run: bool, remotes: &[String]) -> Result<()> {
    let configured = Remotes::load(ctx.store.dir())?;
    let thinners = Thinners::new(ctx, &configured, remotes)?;
    // The last moment each remote holds is kept, so that every remote continues a moment this
    // store still has.
    let mut pinned = BTreeSet::new();
    for r in &configured.remotes {
        pinned.insert(push::load_state(&ctx.store, &r.name)?.pushed);
    }
    let now = crate::when::now_ns();
    let report = if dry_run {
        ctx.store.plan_prune(policy, now, &pinned)?.summary()
    } else {
        match ctx.live {
            Some(l) => {
                let _one = ctx.store.prune_lock();
                // Each step on the recorder thread, what was pending committed first: nothing
                // is recorded (nor a chunk stored) while moments are folded, and every stored
                // chunk is named when the packs are retired. Writers wait for one piece of a
                // run at a time (at most FOLD_PIECE moments: a tenth of a second or so), not for
                // a day's moments, nor for all of them; the packs are collected while they go on.
                let (store, policy) = (ctx.store.clone(), *policy);
                let plan = quiesced(l, move || Ok(store.plan_prune(&policy, now, &pinned)?))
                    .context("nothing was pruned")?;
                let mut report = ctx.store.prune_report(&plan)?;
                let folds: Vec<Vec<Seq>> = plan
                    .folds
                    .iter()
                    .flat_map(|run| pieces(run, FOLD_PIECE))
                    .collect();
                let total = folds.len();
                for (i, piece) in folds.into_iter().enumerate() {
                    let store = ctx.store.clone();
                    report.records_removed += quiesced(l, move || Ok(store.fold(&piece)?))
                        .with_context(|| {
                            format!("the prune stopped after {i} of {total} folds (every kept moment still reads as before); no pack was collected")
                        })?;
                }
                let store = ctx.store.clone();
                let folded = quiesced(l, move || Ok(store.retire(report)?))
                    .context("the prune stopped after folding; no pack was collected")?;
                let report = ctx.store.collect(folded);
                crate::sys::release_free_memory();
                report?
            }
            None => {
                let plan = ctx.store.plan_prune(policy, now, &pinned)?;
                ctx.store.prune(&plan)?
            }
        }
    };
    let thinned = thinners.run(ctx, dry_run)?;
    if ctx.json {
        let mut v = serde_json::to_value(&report)?;
        v["oldest_kept"] = match report.oldest_kept {
            Some((seq, t)) => serde_json::json!({"seq": seq.0, "time": rfc3339(t)}),
            None => serde_json::Value::Null,
        };
        v["remotes"] = serde_json::to_value(&thinned)?;
        return ctx.emit_json(&v);
    }
    let verb = if dry_run { "would keep" } else { "kept" };
    writeln!(
        ctx.out,
        "{verb} {} of {} moments",
        report.moments_kept, report.moments_before
    )?;
    if let Some((seq, t)) = report.oldest_kept {
        writeln!(ctx.out, "oldest moment kept: #{seq} at {}", show_time(t))?;
    }
    if !dry_run {
        writeln!(
            ctx.out,
            "removed {} versions and entries, and {} chunks in {} packs: {} of packs freed ({} of live chunks copied out first)",
            report.records_removed,
            report.chunks_removed,
            report.packs_removed,
            human(report.pack_bytes_removed.saturating_sub(report.bytes_copied)),
            human(report.bytes_copied),
        )?;
        if report.packs_left_for_room > 0 {
            writeln!(
                ctx.out,
                "kept {} packs whose live chunks there was no room to copy out (the store's disk is full): prune again once there is room",
                report.packs_left_for_room
            )?;
        }
        writeln!(
            ctx.out,
            "store {} -> {} (the catalogue gives back the space of the records it rewrote as it reclaims its log)",
            human(report.disk_before),
            human(report.disk_after),
        )?;
        if ctx.live.is_some() && crate::store::compact::is_due(ctx.store.dir()) {
            writeln!(
                ctx.out,
                "the catalogue gives back the space of the records removed when it is compacted, at the next mount"
            )?;
        }
    }
    for t in &thinned {
        let verb = if dry_run { "would keep" } else { "kept" };
        writeln!(
            ctx.out,
            "{}: {verb} {} of {} moments up to epoch {} in {} log segments (were {}); {} {} of {} packs ({}), {} live chunks copied out first",
            t.remote,
            t.moments_after,
            t.moments_before,
            t.head,
            t.segments_after,
            t.segments_before,
            if dry_run { "would delete" } else { "deleted" },
            t.packs_removed,
            t.packs_before,
            human(t.pack_bytes_removed),
            t.chunks_copied,
        )?;
    }
    Ok(())
}
