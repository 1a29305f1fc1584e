//! `clawfs verify`: every chunk checked against its checksum and its hash, and every chunk a
//! version names found.

use anyhow::Result;

use crate::commands::Ctx;

/// Runs `verify`.
pub fn run(ctx: &mut Ctx) -> Result<()> {
    let n = ctx.store.verify()?;
    if ctx.json {
        return ctx.emit_json(&serde_json::json!({"chunks": n, "ok": true}));
    }
    writeln!(ctx.out, "{n} chunks verified, all intact")?;
    Ok(())
}
