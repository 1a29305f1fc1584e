//! `clawfs diff`: what changed between two moments, optionally as a unified diff.

use std::path::PathBuf;

use anyhow::Result;

use crate::commands::{human, shown, Ctx};
use crate::ids::Seq;
use crate::relpath::RelPath;
use crate::store::catalog::NodeKind;
use crate::store::rollback::{DiffEntry, DiffKind};

/// Runs `diff`.
pub fn run(
    ctx: &mut Ctx,
    from: Option<&str>,
    to: Option<&str>,
    patch: bool,
    paths: &[PathBuf],
) -> Result<()> {
    let to = match to {
        Some(w) => ctx.when(w)?,
        None => ctx.when("now")?,
    };
    let from = match from {
        Some(w) => ctx.when(w)?,
        None => Seq(to.0.saturating_sub(1)),
    };
    let scope: Vec<RelPath> = paths.iter().map(|p| ctx.rel(p)).collect::<Result<_>>()?;
    // A path that names nothing at either moment is a mistake, not "no differences": often a
    // moment given where `--from` was meant (`clawfs diff 10m`).
    for (given, p) in paths.iter().zip(&scope) {
        if ctx.store.stat(p, from)?.is_none() && ctx.store.stat(p, to)?.is_none() {
            let given = given.to_string_lossy();
            let hint = if ctx.when(&given).is_ok() {
                format!("; to compare with the moment {given}, use `--from {given}`")
            } else {
                format!(" (check the path, or `clawfs history {p}`)")
            };
            anyhow::bail!("{p} exists neither at #{from} nor at #{to}{hint}");
        }
    }
    let entries = ctx.store.diff(from, to, &scope)?;
    if ctx.json {
        for e in &entries {
            ctx.emit_json(e)?;
        }
        return Ok(());
    }
    if entries.is_empty() {
        writeln!(ctx.out, "no differences between #{from} and #{to}")?;
        return Ok(());
    }
    for e in &entries {
        let (mark, sizes) = match e.change {
            DiffKind::Created => ("+", human(e.new_size.unwrap_or(0))),
            DiffKind::Deleted => ("-", human(e.old_size.unwrap_or(0))),
            DiffKind::Modified => ("M", sizes_both(e)),
            DiffKind::Renamed => ("R", sizes_both(e)),
        };
        let slash = if e.kind == NodeKind::Dir { "/" } else { "" };
        let was = match &e.from {
            Some(f) => format!("{}{slash} -> ", shown(f)),
            None => String::new(),
        };
        let path = shown(&e.path);
        writeln!(ctx.out, "{mark} {was}{path}{slash}  ({sizes})")?;
    }
    if patch {
        for e in entries.iter().filter(|e| e.kind == NodeKind::File) {
            if e.same == Some(true) {
                continue;
            }
            let p = RelPath::new(&e.path)?;
            let was = RelPath::new(e.from.as_deref().unwrap_or(&e.path))?;
            let old = read_text(ctx, &was, from, e.change != DiffKind::Created);
            let new = read_text(ctx, &p, to, e.change != DiffKind::Deleted);
            write_patch(ctx.out, was.as_str(), &e.path, old, new)?;
        }
    }
    Ok(())
}

/// The sizes of an entry at both moments, `old -> new`.
fn sizes_both(e: &DiffEntry) -> String {
    format!(
        "{} -> {}",
        human(e.old_size.unwrap_or(0)),
        human(e.new_size.unwrap_or(0))
    )
}

/// A file's text at a moment; `None` when absent or binary.
pub fn read_text(ctx: &Ctx, p: &RelPath, seq: Seq, exists: bool) -> Option<Option<String>> {
    if !exists {
        return Some(None);
    }
    let bytes = ctx.store.read_file(p, seq).ok()?;
    if bytes.len() > 8 << 20 || bytes.contains(&0) {
        return None;
    }
    String::from_utf8(bytes).ok().map(Some)
}

/// Writes a unified diff of one file, `old_path` at the earlier moment and `new_path` at the
/// later (the same path unless it was renamed), or a note that it is binary.
pub fn write_patch(
    out: &mut dyn std::io::Write,
    old_path: &str,
    new_path: &str,
    old: Option<Option<String>>,
    new: Option<Option<String>>,
) -> Result<()> {
    let (old_path, path) = (shown(old_path), shown(new_path));
    let (Some(old), Some(new)) = (old, new) else {
        writeln!(out, "Binary file {path} differs")?;
        return Ok(());
    };
    let a = old.unwrap_or_default();
    let b = new.unwrap_or_default();
    let d = similar::TextDiff::from_lines(&a, &b);
    write!(
        out,
        "{}",
        d.unified_diff()
            .context_radius(3)
            .header(&format!("a/{old_path}"), &format!("b/{path}"))
    )?;
    Ok(())
}
