//! `clawfs verify`: every chunk checked against its checksum and its hash, and every chunk a
//! version names found; with `--remote`, the same for a remote's whole repository.

use std::path::Path;
use std::process::ExitCode;

use anyhow::Result;

use crate::cli::RemoteOpts;
use crate::commands::restore::{open_repo, remote_entry, scratch, with_bar};
use crate::commands::{human, Ctx};
use crate::replicate::check::{self, CheckReport, Subset};
use crate::replicate::settings::Remotes;

/// Runs `verify`.
pub fn run(ctx: &mut Ctx) -> Result<()> {
    let n = ctx.store.verify()?;
    if ctx.json {
        return ctx.emit_json(&serde_json::json!({"chunks": n, "ok": true}));
    }
    writeln!(ctx.out, "{n} chunks verified, all intact")?;
    Ok(())
}

/// Runs `verify --remote REMOTE` (an empty `from`: the default remote): reads the whole
/// repository (of the packs, `subset`'s slice) into a scratch directory that is removed
/// afterwards. Exits 1 when it found damage.
pub fn run_remote(
    from: &str,
    subset: Option<Subset>,
    opts: &RemoteOpts,
    store_dir: &Path,
    pass_file: Option<&Path>,
    json: bool,
    out: &mut dyn std::io::Write,
) -> Result<ExitCode> {
    let entry = if from.is_empty() {
        Remotes::load(store_dir)?.get(None)?.clone()
    } else {
        remote_entry(store_dir, from, opts)?
    };
    let repo = open_repo(&entry, pass_file)?;
    let scratch = scratch("clawfs-verify-")?;
    let r = with_bar("verify", |progress| {
        check::check(&repo, scratch.path(), subset, progress)
    })?;
    if json {
        serde_json::to_writer(&mut *out, &r)?;
        writeln!(out)?;
    } else {
        say(out, &r)?;
    }
    if r.problems.is_empty() {
        return Ok(ExitCode::SUCCESS);
    }
    eprintln!(
        "{}: {} found",
        r.remote,
        plural(r.problems.len(), "problem")
    );
    Ok(ExitCode::from(1))
}

fn say(out: &mut dyn std::io::Write, r: &CheckReport) -> Result<()> {
    for d in &r.devices {
        writeln!(
            out,
            "device {}: {} log segments, up to moment {}",
            d.device, d.segments, d.head
        )?;
    }
    writeln!(
        out,
        "{}: {} indexes, {} packs ({}), {} chunks read and hashed; downloaded {} in {} requests",
        r.remote,
        r.indexes,
        r.packs,
        human(r.pack_bytes),
        r.chunks,
        human(r.traffic.bytes_down),
        r.traffic.requests()
    )?;
    if let Some(subset) = &r.subset {
        writeln!(
            out,
            "subset {subset}: {} other packs left unread (their indexes vouch for their chunks)",
            r.packs_unread
        )?;
    }
    if !r.unreferenced.is_empty() {
        writeln!(
            out,
            "{} objects named by no log (left by a push or thinning cut short, or a push under way; not damage):",
            r.unreferenced.len()
        )?;
        for o in &r.unreferenced {
            writeln!(out, "  {o}")?;
        }
    }
    if r.problems.is_empty() {
        writeln!(out, "no damage found")?;
    } else {
        writeln!(out, "{}:", plural(r.problems.len(), "problem"))?;
        for p in &r.problems {
            writeln!(out, "  {p}")?;
        }
    }
    Ok(())
}

/// "1 problem", "2 problems".
fn plural(n: usize, what: &str) -> String {
    format!("{n} {what}{}", if n == 1 { "" } else { "s" })
}
