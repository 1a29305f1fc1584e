//! The command line, parsed by clap. Shared by the binary and the daemon, which parses the same
//! arguments when a command is forwarded to it over the control socket.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

/// How a moment may be named, under the `--help` of the commands that take one.
const WHEN_HELP: &str = "WHEN, a moment: now; a sequence number (1042, #1042); a version id (from \
                         `history`); an age (10m, 1h30m, 2d, \"10 minutes ago\"); a time (09:00, \
                         \"yesterday 14:00\", \"2026-11-21 09:00\", RFC 3339); a mark name.";

/// Version control for an AI agent's state directory.
#[derive(Parser, Debug, Clone)]
#[command(name = "clawfs", version, about, long_about = None, after_help = WHEN_HELP)]
pub struct Cli {
    /// The state directory (default: the clawfs mount holding the current directory, else
    /// $OPENCLAW_STATE_DIR, else ~/.openclaw).
    #[arg(short = 'C', long = "dir", global = true, value_name = "DIR")]
    pub dir: Option<PathBuf>,
    /// The store (default: one per directory under $XDG_DATA_HOME/clawfs).
    #[arg(long, global = true, value_name = "PATH")]
    pub store: Option<PathBuf>,
    /// Machine-readable output (schema in the README).
    #[arg(long, global = true)]
    pub json: bool,
    /// Read the repository passphrase from this file (else $CLAWFS_PASSPHRASE, else a prompt).
    #[arg(long, global = true, value_name = "FILE")]
    pub passphrase_file: Option<PathBuf>,
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
        /// When DIR is empty and the default remote has history, clone it first (a new machine).
        #[arg(long)]
        restore_if_empty: bool,
    },
    /// (Internal) started by the mount daemon PID: detaches its mount at DIR if it dies.
    #[command(hide = true)]
    DetachWhenGone {
        /// The daemon.
        pid: u32,
        /// Its mount.
        dir: PathBuf,
    },
    /// Mount a read-only view of the past at MOUNTPOINT: the tree at --at WHEN, or at/,
    /// marks/ and history/ to wander in.
    #[command(after_help = WHEN_HELP)]
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
    #[command(after_help = WHEN_HELP)]
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
        /// Also follow renames back: what the file was under earlier names.
        #[arg(long)]
        follow: bool,
    },
    /// A file's bytes as of a moment.
    #[command(after_help = WHEN_HELP)]
    Cat {
        /// The file.
        file: PathBuf,
        /// The moment (default: now).
        #[arg(long, value_name = "WHEN", default_value = "now")]
        at: String,
    },
    /// What changed between two moments.
    #[command(after_help = WHEN_HELP)]
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
    #[command(after_help = WHEN_HELP)]
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
    #[command(after_help = WHEN_HELP)]
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
    /// Check every chunk of the store against its checksum and hash; with --remote, read a
    /// remote's whole repository instead and check every object and chunk in it.
    Verify {
        /// Check this remote (a configured name, or a URL; alone, the default remote) instead
        /// of the local store.
        #[arg(long, value_name = "REMOTE", num_args = 0..=1, default_missing_value = "")]
        remote: Option<String>,
        /// Read only slice N of T of the remote's packs (logs and indexes are read whole):
        /// 1/7 … 7/7 on successive days read everything once a week.
        #[arg(long, value_name = "N/T", requires = "remote")]
        subset: Option<crate::replicate::check::Subset>,
        /// Options of a remote given as a URL.
        #[command(flatten)]
        opts: RemoteOpts,
    },
    /// Thin old moments and reclaim their space: keep every moment of the last --keep-within,
    /// then the last of each hour up to --hourly, then the last of each day up to --daily.
    /// Marks, safety marks and the moments remotes hold are always kept; a remote keeps
    /// everything it was sent unless named with --remote.
    Prune {
        /// Keep every moment younger than this.
        #[arg(long, value_name = "AGE", default_value = "24h")]
        keep_within: String,
        /// Then keep the last moment of each hour up to this age.
        #[arg(long, value_name = "AGE", default_value = "7d")]
        hourly: String,
        /// Then keep the last moment of each day up to this age; older moments go.
        #[arg(long, value_name = "AGE", default_value = "90d")]
        daily: String,
        /// Say what would be kept, change nothing.
        #[arg(long)]
        dry_run: bool,
        /// Then thin this remote too (repeatable): bring it up to date, rewrite its log of this
        /// machine to the history kept here, and delete what no kept moment uses.
        #[arg(long, value_name = "NAME")]
        remote: Vec<String>,
    },
    /// Configure where history is replicated (encrypted).
    Remote {
        /// What to do.
        #[command(subcommand)]
        cmd: RemoteCmd,
    },
    /// Upload what the remote lacks now.
    Push {
        /// The remote (default: every remote).
        #[arg(long)]
        remote: Option<String>,
        /// Wait until it is done and report.
        #[arg(long)]
        wait: bool,
    },
    /// Write the tree (or PATHs) as of a moment into TARGET, from the local store or a remote.
    #[command(after_help = WHEN_HELP)]
    Restore {
        /// From this remote (a name, or a URL); default: the local store.
        #[arg(long, value_name = "REMOTE")]
        from: Option<String>,
        /// The moment (default: the newest).
        #[arg(long, value_name = "WHEN", default_value = "now")]
        at: String,
        /// Which device's history, when several machines share the remote.
        #[arg(long, value_name = "ID")]
        device: Option<String>,
        /// Where to write (must be empty or absent).
        target: PathBuf,
        /// Only these paths (relative to the tree's root).
        paths: Vec<PathBuf>,
        /// Options of a remote given as a URL.
        #[command(flatten)]
        opts: RemoteOpts,
    },
    /// Serve the history to an agent as MCP tools, on standard input and output (status, log,
    /// history, show, diff, rollback, mark).
    Mcp,
    /// Rebuild the local store from a remote, with its full history, and check the tree out
    /// into DIR (which must be empty or absent).
    Clone {
        /// The remote (a configured name, or a URL).
        #[arg(long, value_name = "REMOTE")]
        from: String,
        /// Which device's history, when several machines share the remote.
        #[arg(long, value_name = "ID")]
        device: Option<String>,
        /// The directory (default: $OPENCLAW_STATE_DIR, else ~/.openclaw).
        dir: Option<PathBuf>,
        /// Options of a remote given as a URL.
        #[command(flatten)]
        opts: RemoteOpts,
    },
}

/// How to reach an S3-compatible remote.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct RemoteOpts {
    /// S3 endpoint URL (MinIO, B2, OSS, COS, R2…; default: AWS).
    #[arg(long, value_name = "URL")]
    pub endpoint: Option<String>,
    /// S3 region (default: us-east-1).
    #[arg(long)]
    pub region: Option<String>,
    /// Path-style requests (MinIO, Garage, and most self-hosted servers need them).
    #[arg(long)]
    pub path_style: bool,
}

/// `clawfs remote …`
#[derive(Subcommand, Debug, Clone)]
pub enum RemoteCmd {
    /// Add a remote: s3://BUCKET/PREFIX or file:///PATH. Creates the encrypted repository
    /// there (or opens the existing one with the passphrase).
    Add {
        /// Its name.
        name: String,
        /// Where it is.
        url: String,
        /// How to reach it.
        #[command(flatten)]
        opts: RemoteOpts,
        /// continuous (default), hourly, daily, or a cron expression ("*/30 * * * *").
        #[arg(long, default_value = "continuous")]
        schedule: String,
        /// Also replicate credentials/** and **/auth-profiles.json.
        #[arg(long)]
        include_secrets: bool,
        /// Store this access key id (the secret comes from $CLAWFS_SECRET_ACCESS_KEY or a
        /// prompt), sealed under the passphrase; default: the AWS environment variables.
        #[arg(long, value_name = "ID")]
        access_key_id: Option<String>,
        /// Make it the default remote.
        #[arg(long)]
        default: bool,
    },
    /// List remotes.
    List,
    /// Forget a remote (nothing on it is deleted).
    Remove {
        /// The name.
        name: String,
    },
    /// Make a remote the default one.
    SetDefault {
        /// The name.
        name: String,
    },
    /// Change the repository passphrase (re-wraps the key; uploads nothing else). The new one
    /// comes from $CLAWFS_NEW_PASSPHRASE or a prompt.
    Passwd {
        /// The remote.
        name: String,
    },
    /// The devices that push to a remote, with their last push.
    Devices {
        /// The remote (default: the default remote).
        name: Option<String>,
    },
    /// (Internal) tell the running daemon that the remotes changed.
    #[command(hide = true)]
    Reload,
}

impl Cmd {
    /// The positional directory some commands take.
    pub fn dir_arg(&self) -> Option<&PathBuf> {
        match self {
            Cmd::Mount { dir, .. }
            | Cmd::Clone { dir, .. }
            | Cmd::Unmount { dir }
            | Cmd::Status { dir }
            | Cmd::Log { dir, .. } => dir.as_ref(),
            _ => None,
        }
    }
}
