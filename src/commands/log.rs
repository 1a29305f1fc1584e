//! `clawfs log`: moments, newest first, with what changed.

use std::collections::HashSet;
use std::path::Path;

use anyhow::{Context, Result};
use serde::Serialize;

use crate::commands::{self, Ctx};
use crate::ids::{Seq, SessionId};
use crate::store::catalog::{Change, Op};
use crate::when::{ago, rfc3339, show_time};

/// One moment in `log --json`.
#[derive(Serialize)]
pub struct LogEntry {
    /// Sequence number: increases with time; accepted as WHEN everywhere.
    pub seq: u64,
    /// RFC 3339, UTC.
    pub time: String,
    /// The session that made it.
    pub session: String,
    /// Number of changes.
    pub changes: u32,
    /// Bytes it added to the store.
    pub stored_bytes: u64,
    /// The changes: path, operation, size, other path.
    pub paths: Vec<LogChange>,
}

/// One change in a moment.
#[derive(Serialize)]
pub struct LogChange {
    /// The path.
    pub path: String,
    /// What happened to it.
    pub op: &'static str,
    /// Size after.
    pub size: Option<u64>,
    /// The other path of a rename or link.
    pub other: Option<String>,
}

/// Runs `log`.
pub fn run(
    ctx: &mut Ctx,
    since: Option<&str>,
    until: Option<&str>,
    path: Option<&Path>,
    session: Option<&str>,
    limit: usize,
) -> Result<()> {
    let head = ctx.store.head();
    if head == Seq::ZERO {
        if ctx.json {
            return Ok(());
        }
        writeln!(ctx.out, "nothing recorded yet")?;
        return Ok(());
    }
    let from = match since {
        Some(w) => ctx.when(w)?,
        None => Seq(1),
    };
    let to = match until {
        Some(w) => ctx.when(w)?,
        None => head,
    };
    if from > to {
        anyhow::bail!(
            "--since names #{from}, which comes after --until's #{to}: nothing is between them \
             (swap them?)"
        );
    }
    let filter = path.map(|p| ctx.rel(p)).transpose()?;
    let session: Option<SessionId> = session
        .map(|s| {
            s.parse()
                .with_context(|| format!("{s:?} is not a session id"))
        })
        .transpose()?;
    let mut shown = 0;
    let epochs: Vec<_> = ctx.store.epochs_rev(from, to).collect();
    for e in epochs {
        if shown >= limit {
            break;
        }
        let (seq, epoch) = e?;
        if session.is_some_and(|s| s != epoch.session) {
            continue;
        }
        let changes = as_shown(ctx.store.changes(seq)?);
        if let Some(f) = &filter {
            let hit = changes
                .iter()
                .any(|c| crate::relpath::RelPath::new(&c.path).is_ok_and(|p| p.starts_with(f)));
            if !hit {
                continue;
            }
        }
        shown += 1;
        if ctx.json {
            let entry = LogEntry {
                seq: seq.0,
                time: rfc3339(epoch.time_ns),
                session: epoch.session.to_string(),
                changes: changes.len() as u32,
                stored_bytes: epoch.stored_bytes,
                paths: changes
                    .iter()
                    .map(|c| LogChange {
                        path: c.path.clone(),
                        op: c.op.as_str(),
                        size: c.size,
                        other: c.other.clone(),
                    })
                    .collect(),
            };
            ctx.emit_json(&entry)?;
            continue;
        }
        let lines = text_lines(&changes);
        let mut counts: std::collections::BTreeMap<&str, usize> = Default::default();
        for (op, _) in &lines {
            *counts.entry(op).or_default() += 1;
        }
        let summary: Vec<String> = counts.iter().map(|(k, v)| format!("{v} {k}")).collect();
        writeln!(
            ctx.out,
            "#{:<6} {}  {:>8}  session {}  {}",
            seq.0,
            show_time(epoch.time_ns),
            ago(epoch.time_ns),
            epoch.session,
            summary.join(", ")
        )?;
        for (op, text) in lines.iter().take(5) {
            writeln!(ctx.out, "         {op:<11} {text}")?;
        }
        if lines.len() > 5 {
            writeln!(ctx.out, "         … and {} more", lines.len() - 5)?;
        }
    }
    Ok(())
}

/// The changes of a moment as text shows them, each an operation and what it touched. A rename
/// within the tree is stored as two changes, `rename-to` on the old path and `rename-from` on
/// the new, each naming the other: shown as one `rename OLD -> NEW`.
fn text_lines(changes: &[Change]) -> Vec<(&'static str, String)> {
    // (old, new) of each side of a rename.
    let side = |op: Op| -> HashSet<(&str, &str)> {
        changes
            .iter()
            .filter(|c| c.op == op)
            .filter_map(|c| {
                let other = c.other.as_deref()?;
                Some(match op {
                    Op::RenameTo => (c.path.as_str(), other),
                    _ => (other, c.path.as_str()),
                })
            })
            .collect()
    };
    let (tos, froms) = (side(Op::RenameTo), side(Op::RenameFrom));
    let mut out = Vec::new();
    for c in changes {
        let path = commands::shown(&c.path);
        match (c.op, c.other.as_deref()) {
            (Op::RenameTo, Some(to)) if froms.contains(&(c.path.as_str(), to)) => {}
            (Op::RenameFrom, Some(from)) if tos.contains(&(from, c.path.as_str())) => {
                out.push(("rename", format!("{} -> {path}", commands::shown(from))));
            }
            (op, Some(o)) => out.push((op.as_str(), format!("{path} ({})", commands::shown(o)))),
            (op, None) => out.push((op.as_str(), path.into_owned())),
        }
    }
    out
}

/// The changes of a moment as `log` shows them. A restore replaces the path's node, and the
/// store notes the old node's removal as well: shown, every rolled-back file would read as
/// "delete" then "restore". The removal says nothing the restore does not, so it is left out.
fn as_shown(changes: Vec<Change>) -> Vec<Change> {
    let restored: HashSet<String> = changes
        .iter()
        .filter(|c| c.op == Op::Restore)
        .map(|c| c.path.clone())
        .collect();
    changes
        .into_iter()
        .filter(|c| !(c.op == Op::Delete && restored.contains(&c.path)))
        .collect()
}
