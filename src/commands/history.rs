//! `clawfs history FILE`: every version of a file.

use std::path::Path;

use anyhow::{bail, Result};
use serde::Serialize;

use crate::commands::{human, shown, Ctx};
use crate::when::{ago, rfc3339, show_time};

#[derive(Serialize)]
struct Version {
    seq: u64,
    time: String,
    version: Option<String>,
    op: &'static str,
    size: Option<u64>,
    other: Option<String>,
    session: String,
    /// The path the file had then: the one asked about, or with `--follow`, an earlier name.
    path: String,
}

/// Runs `history`; with `follow`, through renames back (see [`Store::history_followed`]).
///
/// [`Store::history_followed`]: crate::store::Store::history_followed
pub fn run(ctx: &mut Ctx, file: &Path, limit: usize, follow: bool) -> Result<()> {
    let path = ctx.rel(file)?;
    let entries = if follow {
        ctx.store.history_followed(&path, limit)?
    } else {
        let here = ctx.store.history(&path, limit)?;
        here.into_iter().map(|e| (path.clone(), e)).collect()
    };
    if entries.is_empty() {
        bail!("{path} has no recorded versions");
    }
    for (at, e) in entries {
        if ctx.json {
            ctx.emit_json(&Version {
                seq: e.seq.0,
                time: rfc3339(e.time_ns),
                version: e.version.map(|v| v.to_string()),
                op: e.op.as_str(),
                size: e.size,
                other: e.other.clone(),
                session: e.session.to_string(),
                path: at.as_str().to_string(),
            })?;
            continue;
        }
        let other = e
            .other
            .map(|o| format!("  ({})", shown(&o)))
            .unwrap_or_default();
        let named = if at == path {
            String::new()
        } else {
            format!("  as {}", shown(at.as_str()))
        };
        writeln!(
            ctx.out,
            "{}  #{:<6} {}  {:>8}  {:<11} {:>10}{other}{named}",
            e.version
                .map(|v| v.to_string())
                .unwrap_or_else(|| "-".repeat(12)),
            e.seq.0,
            show_time(e.time_ns),
            ago(e.time_ns),
            e.op.as_str(),
            e.size.map(human).unwrap_or_default(),
        )?;
    }
    Ok(())
}
