//! `clawfs history FILE`: every version of a file.

use std::path::Path;

use anyhow::{bail, Result};
use serde::Serialize;

use crate::commands::{human, Ctx};
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
}

/// Runs `history`.
pub fn run(ctx: &mut Ctx, file: &Path, limit: usize) -> Result<()> {
    let path = ctx.rel(file)?;
    let entries = ctx.store.history(&path, limit)?;
    if entries.is_empty() {
        bail!("{path} has no recorded versions");
    }
    for e in entries {
        if ctx.json {
            ctx.emit_json(&Version {
                seq: e.seq.0,
                time: rfc3339(e.time_ns),
                version: e.version.map(|v| v.to_string()),
                op: e.op.as_str(),
                size: e.size,
                other: e.other.clone(),
                session: e.session.to_string(),
            })?;
            continue;
        }
        writeln!(
            ctx.out,
            "{}  #{:<6} {}  {:>8}  {:<11} {:>10}{}",
            e.version
                .map(|v| v.to_string())
                .unwrap_or_else(|| "-".repeat(12)),
            e.seq.0,
            show_time(e.time_ns),
            ago(e.time_ns),
            e.op.as_str(),
            e.size.map(human).unwrap_or_default(),
            e.other
                .map(|o| format!("  ({})", crate::commands::shown(&o)))
                .unwrap_or_default()
        )?;
    }
    Ok(())
}
