//! `clawfs push [--remote NAME] [--wait]`: upload what a remote lacks, now.

use std::io::IsTerminal;
use std::sync::Arc;

use anyhow::{anyhow, bail, Result};

use crate::commands::{human, Ctx};
use crate::replicate::passphrase;
use crate::replicate::push::{self, PushReport};
use crate::replicate::replicator::{connect, Msg, Replicator};
use crate::replicate::settings::Remotes;

/// A progress bar on stderr when it is a terminal.
pub fn bar(what: &str) -> Option<indicatif::ProgressBar> {
    if !std::io::stderr().is_terminal() {
        return None;
    }
    let b = indicatif::ProgressBar::new(0);
    b.set_style(
        indicatif::ProgressStyle::with_template("{msg:10} [{bar:40}] {pos}/{len} {eta}")
            .expect("template")
            .progress_chars("=> "),
    );
    b.set_message(what.to_string());
    Some(b)
}

fn report(ctx: &mut Ctx, reports: &[PushReport]) -> Result<()> {
    if ctx.json {
        return ctx.emit_json(&reports);
    }
    for r in reports {
        writeln!(
            ctx.out,
            "{}: up to date at epoch {} ({} epochs, {} chunks in {} packs; {} uploaded in {} requests)",
            r.remote,
            r.pushed,
            r.epochs,
            r.chunks,
            r.packs,
            human(r.traffic.bytes_up),
            r.traffic.requests()
        )?;
    }
    Ok(())
}

/// The daemon's replicator, given the client's passphrase if it has one (it unlocks remotes
/// the daemon could not); `None` when nothing is mounted.
pub fn replicator(ctx: &Ctx) -> Result<Option<Arc<Replicator>>> {
    let Some(rep) = ctx.live.and_then(|l| l.replicator.clone()) else {
        return Ok(None);
    };
    if let Some(p) = ctx.passphrase.clone() {
        let (tx, rx) = crossbeam_channel::bounded(1);
        rep.send(Msg::Reload {
            passphrase: Some(p),
            reply: tx,
        })?;
        rx.recv()
            .map_err(|_| anyhow!("the replicator stopped"))?
            .map_err(|e| anyhow!(e))?;
    }
    Ok(Some(rep))
}

/// The repository passphrase: the client's, else asked for (or read from the environment).
pub fn passphrase(ctx: &Ctx) -> Result<String> {
    match ctx.passphrase.clone() {
        Some(p) => Ok(p),
        None => Ok(passphrase::obtain(None, "the remote")?),
    }
}

/// Runs it.
pub fn run(ctx: &mut Ctx, remote: Option<&str>, wait: bool) -> Result<()> {
    if let Some(rep) = replicator(ctx)? {
        if !wait {
            rep.send(Msg::Push {
                remote: remote.map(String::from),
                reply: None,
            })?;
            if !ctx.json {
                writeln!(
                    ctx.out,
                    "push started (see `clawfs status`; --wait waits for it)"
                )?;
            }
            return Ok(());
        }
        let (tx, rx) = crossbeam_channel::bounded(1);
        rep.send(Msg::Push {
            remote: remote.map(String::from),
            reply: Some(tx),
        })?;
        let reports = rx
            .recv()
            .map_err(|_| anyhow!("the replicator stopped"))?
            .map_err(|e| anyhow!("push failed: {e}"))?;
        return report(ctx, &reports);
    }
    // Nothing mounted: push from here.
    let remotes = Remotes::load(ctx.store.dir())?;
    let names: Vec<String> = match remote {
        Some(n) => vec![remotes.get(Some(n))?.name.clone()],
        None => remotes.remotes.iter().map(|r| r.name.clone()).collect(),
    };
    if names.is_empty() {
        bail!("no remote configured: add one with `clawfs remote add NAME URL`");
    }
    let pass = passphrase(ctx)?;
    let store = Arc::clone(&ctx.store);
    let mut reports = Vec::new();
    for n in names {
        let entry = remotes.get(Some(&n))?;
        let repo = connect(entry, &pass)?;
        let b = bar(&n);
        let r = push::push(&store, &repo, entry, &mut |d, t| {
            if let Some(b) = &b {
                b.set_length(t);
                b.set_position(d);
            }
        });
        if let Some(b) = b {
            b.finish_and_clear();
        }
        reports.push(r.map_err(|e| anyhow!("push to {n} failed: {e}"))?);
    }
    report(ctx, &reports)
}
