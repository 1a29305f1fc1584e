//! `clawfs cat FILE --at WHEN`: a file's bytes as of a moment, streamed.

use std::path::Path;

use anyhow::Result;

use crate::commands::Ctx;
use crate::store::content::ReadAt;

/// Runs `cat`.
pub fn run(ctx: &mut Ctx, file: &Path, at: &str) -> Result<()> {
    let path = ctx.rel(file)?;
    let seq = ctx.when(at)?;
    let r = ctx.store.open_file(&path, seq).map_err(|e| match e {
        crate::store::StoreError::NotFound(_) => {
            anyhow::anyhow!("{path} did not exist at moment #{seq} (see `clawfs history {path}`)")
        }
        e => e.into(),
    })?;
    let mut buf = vec![0u8; 1 << 20];
    let mut off = 0;
    while off < r.len() {
        let n = r.read_at(off, &mut buf)?;
        if n == 0 {
            break;
        }
        ctx.out.write_all(&buf[..n])?;
        off += n as u64;
    }
    Ok(())
}
