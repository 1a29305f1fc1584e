//! The `clawfs` binary: parse, run, exit.

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use clap::Parser;

use clawfs::cli::{Cli, Cmd};
use clawfs::commands::{self, Ctx};
use clawfs::config::{absolute, default_dir, default_store, socket_path};
use clawfs::daemon::{browse, control, mount};
use clawfs::store::{Store, StoreError};

fn main() -> ExitCode {
    let cli = Cli::parse();
    let daemon = matches!(
        cli.cmd,
        Cmd::Mount {
            foreground: true,
            ..
        }
    );
    let default = if daemon { "info" } else { "warn" };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("CLAWFS_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default)),
        )
        .with_writer(std::io::stderr)
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
            eprintln!("clawfs: {e:#}");
            ExitCode::from(1)
        }
    }
}

fn store_for(cli: &Cli, dir: &Path, cwd: &Path) -> PathBuf {
    match &cli.store {
        Some(s) => absolute(s, cwd),
        None => default_store(&dir.canonicalize().unwrap_or_else(|_| dir.to_path_buf())),
    }
}

fn run(cli: Cli) -> Result<ExitCode> {
    let cwd = std::env::current_dir().context("no current directory")?;
    let dir = absolute(
        &cli.cmd
            .dir_arg()
            .or(cli.dir.as_ref())
            .cloned()
            .unwrap_or_else(default_dir),
        &cwd,
    );
    match &cli.cmd {
        Cmd::Mount {
            foreground,
            options,
            ..
        } => {
            let from_opts = options
                .iter()
                .find_map(|o| o.strip_prefix("store="))
                .map(|s| absolute(Path::new(s), &cwd));
            let store = from_opts.unwrap_or_else(|| store_for(&cli, &dir, &cwd));
            let dir = mount::preflight(&dir, &store)?;
            if *foreground {
                if let Err(e) = mount::serve(&dir, &store) {
                    // The background parent reads the first line of our output.
                    println!("error: {e:#}");
                    return Err(e);
                }
            } else {
                mount::spawn_background(&dir, &store)?;
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
    let req = control::Request {
        argv: argv.to_vec(),
        cwd: cwd.to_path_buf(),
    };
    if let control::Forwarded::Ran(code) = control::forward(&socket_path(store), &req)? {
        return Ok(ExitCode::from(code.clamp(0, 255) as u8));
    }
    let cli = Cli::try_parse_from(argv).unwrap_or_else(|e| e.exit());
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
    };
    commands::run(&cli.cmd, &mut ctx)?;
    out.flush()?;
    Ok(ExitCode::SUCCESS)
}
