//! `clawfs prune`: thin old moments by the retention policy and reclaim the space they held.

use std::collections::BTreeSet;

use anyhow::{anyhow, bail, Context, Result};

use crate::commands::{human, push as push_cmd, Ctx};
use crate::replicate::passphrase;
use crate::replicate::push;
use crate::replicate::replicator::{connect, Msg};
use crate::replicate::settings::Remotes;
use crate::replicate::thin::{self, ThinReport};
use crate::store::prune::{Folded, Policy};
use crate::when::{parse_age, rfc3339, show_time};

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

/// Thins each remote named: in the daemon's replicator on a live mount, from here otherwise.
fn thin_remotes(ctx: &mut Ctx, names: &[String], dry_run: bool) -> Result<Vec<ThinReport>> {
    let mut out = Vec::new();
    if names.is_empty() {
        return Ok(out);
    }
    let remotes = Remotes::load(ctx.store.dir())?;
    if let Some(rep) = push_cmd::replicator(ctx)? {
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
        return Ok(out);
    }
    let pass = match ctx.passphrase.clone() {
        Some(p) => p,
        None => passphrase::obtain(None, "the remote")?,
    };
    for n in names {
        let entry = remotes.get(Some(n))?;
        let repo = connect(entry, &pass)?;
        let r = thin::thin(&ctx.store, &repo, entry, dry_run);
        out.push(r.map_err(|e| anyhow!("thinning {n} failed: {e}"))?);
    }
    Ok(out)
}

/// Runs `prune`.
pub fn run(ctx: &mut Ctx, policy: &Policy, dry_run: bool, remotes: &[String]) -> Result<()> {
    // A remote named wrong is refused before anything is pruned.
    let configured = Remotes::load(ctx.store.dir())?;
    for n in remotes {
        configured.get(Some(n))?;
    }
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
                let store = ctx.store.clone();
                let policy = *policy;
                // Its first part on the recorder thread: nothing is recorded (nor a chunk
                // stored) meanwhile, and what was pending is committed first, so every stored
                // chunk is named. The packs are collected while writers go on.
                let folded = l
                    .rec
                    .call(move |r| -> Result<Folded> {
                        r.commit(true);
                        if !r.rec.pending_paths().is_empty() {
                            bail!("changes are pending that could not be committed (see `clawfs status`): nothing was pruned");
                        }
                        let plan = store.plan_prune(&policy, now, &pinned)?;
                        Ok(store.fold_and_retire(&plan)?)
                    })
                    .ok_or_else(|| anyhow::anyhow!("the recorder thread is gone"))??;
                let report = ctx.store.collect(folded);
                crate::fs::sys::release_free_memory();
                report?
            }
            None => {
                let plan = ctx.store.plan_prune(policy, now, &pinned)?;
                ctx.store.prune(&plan)?
            }
        }
    };
    let thinned = thin_remotes(ctx, remotes, dry_run)?;
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
        writeln!(
            ctx.out,
            "store {} -> {} (the catalogue gives back the space of the records it rewrote as it reclaims its log)",
            human(report.disk_before),
            human(report.disk_after),
        )?;
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
