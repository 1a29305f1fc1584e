//! The `clawfs` binary: parse, run, exit.

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use clap::Parser;

use clawfs::cli::{Cli, Cmd};
use clawfs::commands::{self, Ctx};
use clawfs::config::{absolute, default_dir, default_store, socket_path};
use clawfs::daemon::{browse, control, mount, sentinel};
use clawfs::replicate::passphrase;
use clawfs::replicate::settings::Remotes;
use clawfs::store::{Store, StoreError};

/// Where log lines go: standard error, without ever failing. The daemon's standard error is its
/// log file in the store; when that disk is full, losing log lines is right and stopping the
/// daemon (as a failed `eprintln!` would) is not: the writers would lose their mount.
struct LogOutput;

impl Write for LogOutput {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let _ = std::io::stderr().write_all(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        let _ = std::io::stderr().flush();
        Ok(())
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let daemon = matches!(
        cli.cmd,
        Cmd::Mount {
            foreground: true,
            ..
        }
    );
    let default = if daemon {
        "info,opendal=warn"
    } else {
        "warn,opendal=off"
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("CLAWFS_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default)),
        )
        .with_writer(|| LogOutput)
        // Colour only for a person at a terminal: the daemon's stderr is its log file (or
        // journald), where escape codes are noise.
        .with_ansi(std::io::stderr().is_terminal())
        .log_internal_errors(false)
        .init();
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            let broken_pipe = e.chain().any(|c| {
                c.downcast_ref::<std::io::Error>()
                    .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
            });
            if broken_pipe {
                return ExitCode::SUCCESS;
            }
            let _ = writeln!(std::io::stderr(), "clawfs: {}", commands::error_text(&e));
            ExitCode::from(1)
        }
    }
}

/// `--store`, else the store of the clawfs mount at `dir`, else the default store for `dir`.
fn store_for(cli: &Cli, dir: &Path, cwd: &Path) -> PathBuf {
    match &cli.store {
        Some(s) => absolute(s, cwd),
        None => {
            let dir = dir.canonicalize().unwrap_or_else(|_| dir.to_path_buf());
            mount::store_of_mount(&dir).unwrap_or_else(|| default_store(&dir))
        }
    }
}

/// The directory a command acts on when none is named: the clawfs mount around the current
/// directory, else `$OPENCLAW_STATE_DIR`, else `~/.openclaw`. `mount` and `clone` start on a
/// directory that is not mounted yet, so they take the latter two.
fn unnamed_dir(cmd: &Cmd, cwd: &Path) -> PathBuf {
    match cmd {
        Cmd::Mount { .. } | Cmd::Clone { .. } => default_dir(),
        _ => mount::mount_holding(cwd).unwrap_or_else(default_dir),
    }
}

fn run(cli: Cli) -> Result<ExitCode> {
    if let Cmd::DetachWhenGone { pid, dir } = &cli.cmd {
        sentinel::run(*pid, dir)?;
        return Ok(ExitCode::SUCCESS);
    }
    let cwd = std::env::current_dir().context("no current directory")?;
    let dir = absolute(
        &cli.cmd
            .dir_arg()
            .or(cli.dir.as_ref())
            .cloned()
            .unwrap_or_else(|| unnamed_dir(&cli.cmd, &cwd)),
        &cwd,
    );
    match &cli.cmd {
        Cmd::Mount {
            foreground,
            options,
            restore_if_empty,
            ..
        } => {
            let from_opts = options
                .iter()
                .find_map(|o| o.strip_prefix("store="))
                .map(|s| absolute(Path::new(s), &cwd));
            let store = from_opts.unwrap_or_else(|| store_for(&cli, &dir, &cwd));
            let io_uring = match options.iter().find_map(|o| o.strip_prefix("io_uring=")) {
                None | Some("on") => true,
                Some("off") => false,
                Some(v) => bail!("-o io_uring={v}: expected on or off"),
            };
            let remotes = Remotes::load(&store)?;
            // The daemon needs the passphrase to replicate; ask now, while we have a terminal.
            let pass = if remotes.remotes.is_empty() {
                None
            } else if *restore_if_empty || std::io::stdin().is_terminal() {
                Some(passphrase::obtain(
                    cli.passphrase_file.as_deref(),
                    "the remotes (replication)",
                )?)
            } else {
                passphrase::given(cli.passphrase_file.as_deref())?
            };
            if *restore_if_empty {
                restore_if_empty_dir(&dir, &store, &remotes, pass.as_deref(), cli.json)?;
            }
            let dir = mount::preflight(&dir, &store)?;
            if *foreground {
                if let Some(p) = &pass {
                    std::env::set_var("CLAWFS_PASSPHRASE", p);
                }
                if let Err(e) = mount::serve(&dir, &store, io_uring) {
                    // The background parent reads the first line of our output.
                    println!("error: {}", commands::error_text(&e));
                    return Err(e);
                }
            } else {
                mount::spawn_background(&dir, &store, pass.as_deref(), io_uring)?;
                if !cli.json {
                    println!("mounted {} (store {})", dir.display(), store.display());
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Browse {
            mountpoint,
            at,
            foreground,
        } => {
            let store = store_for(&cli, &dir, &cwd);
            let mp = absolute(mountpoint, &cwd);
            if *foreground {
                return browse::serve(&store, &mp, at.as_deref()).map(|_| ExitCode::SUCCESS);
            }
            let mp = browse::preflight(&mp)?;
            // A running mount daemon owns the store: it serves the view too.
            let mut argv: Vec<String> = std::env::args().collect();
            if let Some(i) = argv
                .iter()
                .position(|a| Path::new(a) == mountpoint.as_path())
            {
                argv[i] = mp.display().to_string();
            }
            let req = control::Request {
                argv,
                cwd: cwd.clone(),
                passphrase: None,
            };
            match control::forward(&socket_path(&store), &req)? {
                control::Forwarded::Ran(code) => {
                    return Ok(ExitCode::from(code.clamp(0, 255) as u8))
                }
                control::Forwarded::NoDaemon => {
                    if !store.join("catalog").exists() {
                        bail!(
                            "no clawfs store for {} (looked in {}): mount it first with `clawfs mount {}`",
                            dir.display(),
                            store.display(),
                            dir.display()
                        );
                    }
                    browse::spawn_background(&store, &mp, at.as_deref())?
                }
            }
            if !cli.json {
                println!("mounted a view of the past at {}", mp.display());
            }
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Unmount { .. } => {
            let d = dir.canonicalize().unwrap_or(dir.clone());
            let store = store_for(&cli, &d, &cwd);
            mount::unmount(&d, &store)?;
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Mcp => {
            let store = cli.store.as_ref().map(|s| absolute(s, &cwd));
            commands::mcp::serve(&dir, store.as_deref())?;
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Remote { cmd } => {
            let store = store_for(&cli, &dir, &cwd);
            let stdout = std::io::stdout();
            let outcome = commands::remote::run(
                cmd,
                &store,
                cli.json,
                cli.passphrase_file.as_deref(),
                &mut stdout.lock(),
            )?;
            if let commands::remote::Outcome::Changed = outcome {
                // A running daemon picks the change up (and unlocks with our passphrase).
                let req = control::Request {
                    argv: vec!["clawfs".into(), "remote".into(), "reload".into()],
                    cwd: cwd.clone(),
                    passphrase: passphrase::given(cli.passphrase_file.as_deref())?,
                };
                control::forward(&socket_path(&store), &req)?;
            }
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Restore {
            from: Some(from),
            at,
            device,
            target,
            paths,
            opts,
        } => {
            let store = store_for(&cli, &dir, &cwd);
            let stdout = std::io::stdout();
            let target = absolute(target, &cwd);
            let req = commands::restore::FromRemote {
                from,
                opts,
                device: device.as_deref(),
                at,
                target: &target,
                paths,
            };
            commands::restore::run_from(
                &req,
                &store,
                cli.passphrase_file.as_deref(),
                cli.json,
                &mut stdout.lock(),
            )?;
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Verify {
            remote: Some(remote),
            subset,
            opts,
        } => {
            let store = store_for(&cli, &dir, &cwd);
            let stdout = std::io::stdout();
            commands::verify::run_remote(
                remote,
                *subset,
                opts,
                &store,
                cli.passphrase_file.as_deref(),
                cli.json,
                &mut stdout.lock(),
            )
        }
        Cmd::Clone {
            from, device, opts, ..
        } => {
            clone(&cli, &dir, &cwd, from, device.as_deref(), opts)?;
            Ok(ExitCode::SUCCESS)
        }
        cmd => {
            let store = store_for(&cli, &dir, &cwd);
            let mut argv: Vec<String> = std::env::args().collect();
            if let Cmd::Rollback {
                preview: false,
                yes: false,
                ..
            } = cmd
            {
                if !std::io::stdin().is_terminal() {
                    bail!(
                        "rollback changes files: add --yes to confirm, or --preview to look first"
                    );
                }
                let mut preview = argv.clone();
                preview.push("--preview".into());
                run_store(&cli, &preview, &dir, &store, &cwd)?;
                eprint!("Proceed? [y/N] ");
                let mut answer = String::new();
                std::io::stdin().read_line(&mut answer)?;
                if !matches!(answer.trim(), "y" | "Y" | "yes") {
                    eprintln!("nothing changed");
                    return Ok(ExitCode::from(1));
                }
                argv.push("--yes".into());
            }
            run_store(&cli, &argv, &dir, &store, &cwd)
        }
    }
}

/// Runs a store command: in the daemon when one serves the store, else here.
fn run_store(
    _cli: &Cli,
    argv: &[String],
    dir: &Path,
    store: &Path,
    cwd: &Path,
) -> Result<ExitCode> {
    let cli = Cli::try_parse_from(argv).unwrap_or_else(|e| e.exit());
    let passphrase = match cli.cmd {
        Cmd::Push { .. } | Cmd::Restore { .. } => {
            passphrase::given(cli.passphrase_file.as_deref())?
        }
        Cmd::Prune { ref remote, .. } if !remote.is_empty() => {
            passphrase::given(cli.passphrase_file.as_deref())?
        }
        _ => None,
    };
    let req = control::Request {
        argv: argv.to_vec(),
        cwd: cwd.to_path_buf(),
        passphrase: passphrase.clone(),
    };
    if let control::Forwarded::Ran(code) = control::forward(&socket_path(store), &req)? {
        return Ok(ExitCode::from(code.clamp(0, 255) as u8));
    }
    let s = Store::open(store).map_err(|e| match e {
        StoreError::NotAStore(_) => anyhow::anyhow!(
            "no clawfs store for {} (looked in {}): mount it first with `clawfs mount {}`, or pass --store",
            dir.display(),
            store.display(),
            dir.display()
        ),
        e => e.into(),
    })?;
    let dir = dir.canonicalize().unwrap_or_else(|_| dir.to_path_buf());
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    let mut ctx = Ctx {
        store: s,
        dir,
        cwd: cwd.to_path_buf(),
        json: cli.json,
        out: &mut out,
        live: None,
        passphrase,
        client: None,
    };
    commands::run(&cli.cmd, &mut ctx)?;
    drop(ctx);
    if let Cmd::Prune { dry_run: false, .. } = cli.cmd {
        // The store is closed now: the catalogue can be compacted if the prune emptied enough.
        match clawfs::store::compact::if_due(store, std::time::Duration::from_secs(10)) {
            Ok(Some(c)) if !cli.json => writeln!(
                out,
                "catalogue compacted: {} -> {} ({} records kept)",
                commands::human(c.bytes_before),
                commands::human(c.bytes_after),
                c.records
            )?,
            Ok(_) => {}
            Err(e) => eprintln!(
                "warning: the catalogue was not compacted (it is as it was; tried again at the next prune or mount): {e}"
            ),
        }
    }
    out.flush()?;
    Ok(ExitCode::SUCCESS)
}

fn dir_is_empty(dir: &Path) -> Result<bool> {
    match std::fs::read_dir(dir) {
        Ok(mut d) => Ok(d.next().is_none()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(true),
        Err(e) => Err(e).with_context(|| format!("reading {}", dir.display())),
    }
}

/// `clawfs clone --from REMOTE [DIR]`: the store with its full history, and the tree in DIR.
fn clone(
    cli: &Cli,
    dir: &Path,
    cwd: &Path,
    from: &str,
    device: Option<&str>,
    opts: &clawfs::cli::RemoteOpts,
) -> Result<()> {
    if !dir_is_empty(dir)? {
        bail!(
            "{} is not empty: clone into a new or empty directory",
            dir.display()
        );
    }
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let store = store_for(cli, dir, cwd);
    let entry = commands::restore::remote_entry(&store, from, opts)?;
    let repo = commands::restore::open_repo(&entry, cli.passphrase_file.as_deref())?;
    clone_and_check_out(&repo, &entry, device, dir, &store, cli.json)
}

fn clone_and_check_out(
    repo: &clawfs::replicate::repo::Repo,
    entry: &clawfs::replicate::settings::RemoteEntry,
    device: Option<&str>,
    dir: &Path,
    store_dir: &Path,
    json: bool,
) -> Result<()> {
    let device = clawfs::replicate::restore::pick_device(repo, device, None)?;
    let s = commands::restore::clone_store(repo, &entry.name, &device, store_dir)?;
    s.flush()?;
    let mut remotes = Remotes::load(store_dir)?;
    if !remotes.remotes.iter().any(|r| r.name == entry.name) {
        let mut e = entry.clone();
        e.config = Some(repo.config().clone());
        remotes.remotes.push(e);
        remotes.default.get_or_insert(entry.name.clone());
        remotes.save(store_dir)?;
    }
    let head = s.head();
    let r = clawfs::replicate::restore::restore_tree(
        &clawfs::replicate::restore::TreeSource {
            verified: true,
            ..clawfs::replicate::restore::TreeSource::store(&s)
        },
        head,
        dir,
        &[],
        &mut |_, _| {},
    )?;
    clawfs::realfs::RealTree::new_batch(dir).sync_all()?;
    if json {
        println!("{}", serde_json::to_string(&r)?);
    } else {
        println!(
            "cloned {} epochs from {} into {} ({} files, store {})",
            head,
            repo.remote().describe(),
            dir.display(),
            r.files,
            store_dir.display()
        );
    }
    Ok(())
}

/// `mount --restore-if-empty`: the new-machine path.
fn restore_if_empty_dir(
    dir: &Path,
    store_dir: &Path,
    remotes: &Remotes,
    pass: Option<&str>,
    json: bool,
) -> Result<()> {
    let has_history = Store::open(store_dir)
        .map(|s| s.head() != clawfs::ids::Seq::ZERO)
        .unwrap_or(store_dir.join("catalog").exists());
    if !dir_is_empty(dir)? || has_history || remotes.remotes.is_empty() {
        return Ok(());
    }
    let entry = remotes.get(None)?;
    let pass = pass.context("--restore-if-empty needs the passphrase")?;
    let repo = clawfs::replicate::repo::Repo::open_entry(entry, pass)?;
    if repo.devices()?.is_empty() {
        return Ok(());
    }
    std::fs::create_dir_all(dir)?;
    clone_and_check_out(&repo, entry, None, dir, store_dir, json)
}
