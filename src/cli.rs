//! The command line, parsed by clap. Shared by the binary and the daemon, which parses the same
//! arguments when a command is forwarded to it over the control socket.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

/// Version control for an AI agent's state directory.
#[derive(Parser, Debug, Clone)]
#[command(name = "clawfs", version, about, long_about = None)]
pub struct Cli {
    /// The state directory (default: $OPENCLAW_STATE_DIR, else ~/.openclaw).
    #[arg(short = 'C', long = "dir", global = true, value_name = "DIR")]
    pub dir: Option<PathBuf>,
    /// The store (default: one per directory under $XDG_DATA_HOME/clawfs).
    #[arg(long, global = true, value_name = "PATH")]
    pub store: Option<PathBuf>,
    /// Machine-readable output (schema in the README).
    #[arg(long, global = true)]
    pub json: bool,
    /// What to do.
    #[command(subcommand)]
    pub cmd: Cmd,
}

/// The subcommands.
#[derive(Subcommand, Debug, Clone)]
pub enum Cmd {
    /// Mount the overlay over DIR itself and version every change.
    Mount {
        /// The directory (default: $OPENCLAW_STATE_DIR, else ~/.openclaw).
        dir: Option<PathBuf>,
        /// Stay in the foreground (for systemd).
        #[arg(long)]
        foreground: bool,
        /// Mount options (from mount.clawfs / fstab); `store=PATH` names the store.
        #[arg(short = 'o', value_delimiter = ',')]
        options: Vec<String>,
    },
    /// Mount a read-only view of the past at MOUNTPOINT: the tree at --at WHEN, or at/,
    /// marks/ and history/ to wander in.
    Browse {
        /// Where to mount the view.
        mountpoint: PathBuf,
        /// Show the whole tree as it was at this moment.
        #[arg(long, value_name = "WHEN")]
        at: Option<String>,
        /// Stay in the foreground.
        #[arg(long)]
        foreground: bool,
    },
    /// Flush and unmount.
    Unmount {
        /// The directory or time-travel view.
        dir: Option<PathBuf>,
    },
    /// Mounted or not, store size, versions, oldest moment.
    Status {
        /// The directory.
        dir: Option<PathBuf>,
    },
    /// Moments, newest first.
    Log {
        /// The directory.
        dir: Option<PathBuf>,
        /// Only moments at or after WHEN.
        #[arg(long, value_name = "WHEN")]
        since: Option<String>,
        /// Only moments at or before WHEN.
        #[arg(long, value_name = "WHEN")]
        until: Option<String>,
        /// Only moments that changed this path (or something below it).
        #[arg(long, value_name = "P")]
        path: Option<PathBuf>,
        /// Only moments of this session.
        #[arg(long, value_name = "ID")]
        session: Option<String>,
        /// At most N moments.
        #[arg(long, default_value_t = 50)]
        limit: usize,
    },
    /// Every version of a file.
    History {
        /// The file.
        file: PathBuf,
        /// At most N versions.
        #[arg(long, default_value_t = 100)]
        limit: usize,
    },
    /// A file's bytes as of a moment.
    Cat {
        /// The file.
        file: PathBuf,
        /// The moment (default: now).
        #[arg(long, value_name = "WHEN", default_value = "now")]
        at: String,
    },
    /// What changed between two moments.
    Diff {
        /// From this moment (default: the one before --to).
        #[arg(long, value_name = "WHEN")]
        from: Option<String>,
        /// To this moment (default: now).
        #[arg(long, value_name = "WHEN")]
        to: Option<String>,
        /// Show a unified diff of text files.
        #[arg(long)]
        patch: bool,
        /// Only these paths.
        paths: Vec<PathBuf>,
    },
    /// Put files (or the whole tree) back as they were at a moment, as new versions.
    Rollback {
        /// The moment.
        #[arg(long, value_name = "WHEN")]
        to: String,
        /// Only these files or subtrees (default: the whole tree).
        paths: Vec<PathBuf>,
        /// Show what would change, change nothing.
        #[arg(long)]
        preview: bool,
        /// With --preview, show a unified diff of text files.
        #[arg(long)]
        patch: bool,
        /// Do not ask for confirmation.
        #[arg(long, short = 'y')]
        yes: bool,
        /// Also roll back credentials/** and **/auth-profiles.json.
        #[arg(long)]
        include_secrets: bool,
        /// Replace files even while processes hold them open for writing.
        #[arg(long)]
        force: bool,
    },
    /// Name the current moment.
    Mark {
        /// The name.
        name: String,
        /// What it is for.
        #[arg(short = 'm', long, default_value = "")]
        message: String,
        /// Mark this moment instead of now.
        #[arg(long, value_name = "WHEN")]
        at: Option<String>,
    },
    /// List marks.
    Marks,
    /// Remove a mark.
    Unmark {
        /// The name.
        name: String,
    },
    /// Check every chunk of the store against its checksum and hash.
    Verify,
}

impl Cmd {
    /// Commands that run against a store (in the daemon when one serves it).
    pub fn uses_store(&self) -> bool {
        !matches!(
            self,
            Cmd::Mount { .. } | Cmd::Unmount { .. } | Cmd::Browse { .. }
        )
    }

    /// The positional directory some commands take.
    pub fn dir_arg(&self) -> Option<&PathBuf> {
        match self {
            Cmd::Mount { dir, .. }
            | Cmd::Unmount { dir }
            | Cmd::Status { dir }
            | Cmd::Log { dir, .. } => dir.as_ref(),
            _ => None,
        }
    }
}
