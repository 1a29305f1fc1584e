//! `clawfs mark`, `clawfs marks`, `clawfs unmark`: named moments, kept until removed by name.

use anyhow::Result;
use serde::Serialize;

use crate::commands::rollback::offline_recording;
use crate::commands::Ctx;
use crate::store::catalog::{now_ns, Mark};
use crate::when::{ago, rfc3339, show_time};

#[derive(Serialize)]
struct MarkOut<'a> {
    name: &'a str,
    seq: u64,
    time: String,
    message: &'a str,
    safety: bool,
}

fn out(m: &Mark) -> MarkOut<'_> {
    MarkOut {
        name: &m.name,
        seq: m.seq.0,
        time: rfc3339(m.time_ns),
        message: &m.message,
        safety: m.safety,
    }
}

/// `mark NAME`.
pub fn mark(ctx: &mut Ctx, name: &str, message: &str, at: Option<&str>) -> Result<()> {
    match ctx.live {
        // Files written passed through (renamed in while open) are captured as they are: the
        // mark names the tree as it is.
        Some(l) => {
            l.overlay.capture_passed_through(&l.rec);
            l.rec.commit(true, true)
        }
        // Offline, the moment is the tree as it is now: what changed in it since the last
        // mount is captured first (a mark named the moment of the last unmount instead).
        None if at.is_none() => drop(offline_recording(ctx, "mark")?),
        None => {}
    }
    let seq = ctx.when(at.unwrap_or("now"))?;
    let m = Mark {
        name: name.to_string(),
        seq,
        time_ns: now_ns(),
        message: message.to_string(),
        safety: false,
    };
    ctx.store.add_mark(&m)?;
    if ctx.json {
        return ctx.emit_json(&out(&m));
    }
    writeln!(ctx.out, "marked #{seq} as {name}")?;
    Ok(())
}

/// `marks`.
pub fn list(ctx: &mut Ctx) -> Result<()> {
    let marks = ctx.store.marks()?;
    for m in &marks {
        if ctx.json {
            ctx.emit_json(&out(m))?;
        } else {
            let when = ctx
                .store
                .epoch(m.seq)?
                .map(|e| format!("{} ({})", show_time(e.time_ns), ago(e.time_ns)))
                .unwrap_or_default();
            writeln!(
                ctx.out,
                "{:<24} #{:<6} {}{}{}",
                m.name,
                m.seq.0,
                when,
                if m.safety { "  [safety]" } else { "" },
                if m.message.is_empty() {
                    String::new()
                } else {
                    format!("  {}", m.message)
                }
            )?;
        }
    }
    if marks.is_empty() && !ctx.json {
        writeln!(ctx.out, "no marks")?;
    }
    Ok(())
}

/// `unmark NAME`.
pub fn unmark(ctx: &mut Ctx, name: &str) -> Result<()> {
    let m = ctx.store.remove_mark(name)?;
    if ctx.json {
        return ctx.emit_json(&out(&m));
    }
    writeln!(ctx.out, "removed mark {name} (#{})", m.seq)?;
    Ok(())
}
