//! `clawfs verify`: every chunk checked against its checksum and its hash.

use anyhow::Result;

use crate::commands::Ctx;

/// Runs `verify`.
pub fn run(ctx: &mut Ctx) -> Result<()> {
    let n = ctx.store.packs().verify_all()?;
    if ctx.json {
        return ctx.emit_json(&serde_json::json!({"chunks": n, "ok": true}));
    }
    writeln!(ctx.out, "{n} chunks verified, all intact")?;
    Ok(())
}
