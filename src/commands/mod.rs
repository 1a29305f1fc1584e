//! One file per subcommand. Each runs against a [`Ctx`]: a store, and — when a daemon serves
//! the directory — the live recorder and overlay. The same code runs in the daemon (for a
//! command forwarded over the control socket) and in the CLI (when nothing is mounted).

pub mod cat;
pub mod diff;
pub mod history;
pub mod log;
pub mod mark;
pub mod mcp;
pub mod prune;
pub mod push;
pub mod remote;
pub mod restore;
pub mod rollback;
pub mod status;
pub mod verify;

use std::io::Write;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, Context, Result};

use crate::cli::Cmd;
use crate::config;
use crate::daemon::recorder_thread::RecorderHandle;
use crate::fs::overlay::Live;
use crate::ids::{Seq, SessionId};
use crate::relpath::RelPath;
use crate::store::Store;

/// What a running daemon lends a command.
pub struct LiveCtx {
    /// The recorder thread.
    pub rec: Arc<RecorderHandle>,
    /// The overlay's shared state.
    pub overlay: Arc<Live>,
    /// The real directory's fd (opened before mounting).
    pub root: Arc<OwnedFd>,
    /// The mount session.
    pub session: SessionId,
    /// When the mount started.
    pub started_ns: i64,
    /// The replicator thread, when it could start.
    pub replicator: Option<Arc<crate::replicate::replicator::Replicator>>,
}

/// Everything a command needs.
pub struct Ctx<'a> {
    /// The store.
    pub store: Arc<Store>,
    /// The state directory (absolute).
    pub dir: PathBuf,
    /// Where relative paths are taken from.
    pub cwd: PathBuf,
    /// Machine-readable output.
    pub json: bool,
    /// Where output goes.
    pub out: &'a mut dyn Write,
    /// The daemon's state, when the command runs inside it.
    pub live: Option<&'a LiveCtx>,
    /// The repository passphrase, when the user gave one.
    pub passphrase: Option<String>,
    /// The process that sent the command over the control socket, if one did: not counted
    /// among the processes that hold the tree.
    pub client: Option<u32>,
}

impl Ctx<'_> {
    /// A path given by the user as a path in the tree. Relative paths are taken from the
    /// current directory when it is inside the tree, else from the tree's root.
    pub fn rel(&self, p: &Path) -> Result<RelPath> {
        let base = if self.cwd.starts_with(&self.dir) {
            self.cwd.clone()
        } else {
            self.dir.clone()
        };
        let abs = config::absolute(p, &base);
        let Ok(rest) = abs.strip_prefix(&self.dir) else {
            bail!(
                "{} is outside {}: give a path inside the directory",
                p.display(),
                self.dir.display()
            );
        };
        let s = rest
            .to_str()
            .with_context(|| format!("{} is not valid UTF-8", p.display()))?;
        Ok(RelPath::new(s)?)
    }

    /// A moment given by the user.
    pub fn when(&self, s: &str) -> Result<Seq> {
        Ok(crate::when::resolve(&self.store, s)?)
    }

    /// Writes one JSON value and a newline.
    pub fn emit_json<T: serde::Serialize>(&mut self, v: &T) -> Result<()> {
        serde_json::to_writer(&mut *self.out, v)?;
        writeln!(self.out)?;
        Ok(())
    }
}

/// Runs a store command.
pub fn run(cmd: &Cmd, ctx: &mut Ctx) -> Result<()> {
    match cmd {
        Cmd::Status { .. } => status::run(ctx),
        Cmd::Log {
            since,
            until,
            path,
            session,
            limit,
            ..
        } => log::run(
            ctx,
            since.as_deref(),
            until.as_deref(),
            path.as_deref(),
            session.as_deref(),
            *limit,
        ),
        Cmd::History {
            file,
            limit,
            follow,
        } => history::run(ctx, file, *limit, *follow),
        Cmd::Cat { file, at } => cat::run(ctx, file, at),
        Cmd::Diff {
            from,
            to,
            patch,
            paths,
        } => diff::run(ctx, from.as_deref(), to.as_deref(), *patch, paths),
        Cmd::Rollback {
            to,
            paths,
            preview,
            patch,
            yes: _,
            include_secrets,
            force,
        } => rollback::run(ctx, to, paths, *preview, *patch, *include_secrets, *force),
        Cmd::Mark { name, message, at } => mark::mark(ctx, name, message, at.as_deref()),
        Cmd::Marks => mark::list(ctx),
        Cmd::Unmark { name } => mark::unmark(ctx, name),
        Cmd::Verify { .. } => verify::run(ctx),
        Cmd::Prune {
            keep_within,
            hourly,
            daily,
            dry_run,
            remote,
        } => prune::run(
            ctx,
            &prune::policy(keep_within, hourly, daily)?,
            *dry_run,
            remote,
        ),
        Cmd::Push { remote, wait } => push::run(ctx, remote.as_deref(), *wait),
        Cmd::Restore {
            from: None,
            at,
            target,
            paths,
            ..
        } => restore::run_local(ctx, at, target, paths),
        Cmd::Remote {
            cmd: crate::cli::RemoteCmd::Reload,
        } => remote::reload(ctx),
        Cmd::Mount { .. }
        | Cmd::DetachWhenGone { .. }
        | Cmd::Unmount { .. }
        | Cmd::Browse { .. }
        | Cmd::Clone { .. }
        | Cmd::Remote { .. }
        | Cmd::Restore { .. }
        | Cmd::Mcp => {
            bail!("not a store command")
        }
    }
}

/// An error as one line: each cause after the context it explains, as `{e:#}` does, but a
/// cause the text already ends with is said once ("restoring P: File name too long", where
/// `{e:#}` said the cause twice, since our errors name their cause and also chain it).
pub fn error_text(e: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in e.chain() {
        let said = cause.to_string();
        if out.ends_with(&said) {
            continue;
        }
        if !out.is_empty() {
            out.push_str(": ");
        }
        out.push_str(&said);
    }
    out
}

/// A path (or name) as text output shows it: as it is, unless it holds a control character
/// (a newline, an escape sequence), in which case it is quoted with those escaped, as git
/// does: a file name cannot break a listing into false lines or drive the terminal.
pub fn shown(path: &str) -> std::borrow::Cow<'_, str> {
    if path.chars().any(char::is_control) {
        format!("{path:?}").into()
    } else {
        path.into()
    }
}

/// Human-friendly byte counts.
pub fn human(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A cause the context already ends with is said once; other causes follow their context.
    #[test]
    fn error_text_says_each_cause_once() {
        let io = || std::io::Error::from_raw_os_error(libc::ENAMETOOLONG);
        let store = crate::store::StoreError::Io {
            what: "restoring notes/x".into(),
            source: io(),
        };
        let e = anyhow::Error::from(store).context("rollback to #3");
        assert_eq!(
            error_text(&e),
            "rollback to #3: restoring notes/x: File name too long (os error 36)"
        );
        let plain = anyhow::Error::from(io()).context("opening notes/x");
        assert_eq!(
            error_text(&plain),
            "opening notes/x: File name too long (os error 36)"
        );
    }
}
