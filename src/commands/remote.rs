//! `clawfs remote add|list|remove|set-default|passwd|devices`: run in the CLI process (they
//! touch only `remotes.json` and the remote), then ask a running daemon to reload.

use std::io::Write;
use std::path::Path;
use std::sync::Arc;

use anyhow::{bail, Context, Result};

use crate::cli::{RemoteCmd, RemoteOpts};
use crate::crypto::LocalSecret;
use crate::remote::{OpendalRemote, RemoteSpec};
use crate::replicate::layout::{self, DeviceState};
use crate::replicate::passphrase;
use crate::replicate::repo::Repo;
use crate::replicate::settings::{RemoteEntry, Remotes, Schedule};

/// A spec from a URL and options.
pub fn spec_of(url: &str, opts: &RemoteOpts) -> Result<RemoteSpec> {
    let mut spec = RemoteSpec::parse(url)?;
    spec.endpoint = opts.endpoint.clone();
    spec.region = opts.region.clone();
    spec.path_style = opts.path_style;
    Ok(spec)
}

/// What a remote command changed, so the caller knows whether to tell the daemon.
pub enum Outcome {
    /// The remotes file changed.
    Changed,
    /// Nothing to tell.
    Unchanged,
}

/// Runs a remote subcommand against the store directory `store`.
pub fn run(
    cmd: &RemoteCmd,
    store: &Path,
    json: bool,
    pass_file: Option<&Path>,
    out: &mut dyn Write,
) -> Result<Outcome> {
    let mut remotes = Remotes::load(store)?;
    match cmd {
        RemoteCmd::Add {
            name,
            url,
            opts,
            schedule,
            include_secrets,
            access_key_id,
            default,
        } => {
            if name.is_empty()
                || !name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            {
                bail!("{name:?} is not a valid remote name (letters, digits, '-', '_')");
            }
            if remotes.remotes.iter().any(|r| &r.name == name) {
                bail!("a remote named {name} exists already (remove it first)");
            }
            let schedule = Schedule::parse(schedule)?;
            let mut spec = spec_of(url, opts)?;
            let pass = passphrase::obtain(pass_file, &format!("remote {name}"))?;
            let access_key = match access_key_id {
                None => None,
                Some(id) => {
                    let secret = match std::env::var("CLAWFS_SECRET_ACCESS_KEY") {
                        Ok(s) if !s.is_empty() => s,
                        _ => rpassword::prompt_password(format!("Secret access key for {id}: "))
                            .context("set CLAWFS_SECRET_ACCESS_KEY or run on a terminal")?,
                    };
                    spec.access_key = Some((id.clone(), secret.clone()));
                    Some(LocalSecret::seal(
                        &pass,
                        &format!("access key of {name}"),
                        format!("{id}\n{secret}").as_bytes(),
                    )?)
                }
            };
            let remote = Arc::new(OpendalRemote::new(&spec)?);
            let (repo, created) = Repo::open(remote, &pass, true)?;
            remotes.remotes.push(RemoteEntry {
                name: name.clone(),
                spec: RemoteSpec {
                    access_key: None,
                    ..spec
                },
                schedule,
                include_secrets: *include_secrets,
                access_key,
                config: Some(repo.config().clone()),
            });
            if *default || remotes.default.is_none() {
                remotes.default = Some(name.clone());
            }
            remotes.save(store)?;
            if !json {
                writeln!(
                    out,
                    "added remote {name} ({}): {} repository {}",
                    repo.remote().describe(),
                    if created {
                        "created a new encrypted"
                    } else {
                        "opened the existing"
                    },
                    repo.id()
                )?;
            }
            Ok(Outcome::Changed)
        }
        RemoteCmd::List => {
            if json {
                let v: Vec<_> = remotes
                    .remotes
                    .iter()
                    .map(|r| {
                        serde_json::json!({
                            "name": r.name, "url": r.spec.url, "endpoint": r.spec.endpoint,
                            "region": r.spec.region, "path_style": r.spec.path_style,
                            "schedule": r.schedule.to_string(), "include_secrets": r.include_secrets,
                            "default": remotes.default.as_deref() == Some(r.name.as_str()),
                        })
                    })
                    .collect();
                serde_json::to_writer(&mut *out, &v)?;
                writeln!(out)?;
            } else if remotes.remotes.is_empty() {
                writeln!(
                    out,
                    "no remotes (add one with `clawfs remote add NAME URL`)"
                )?;
            } else {
                for r in &remotes.remotes {
                    let star = if remotes.default.as_deref() == Some(r.name.as_str()) {
                        "*"
                    } else {
                        " "
                    };
                    let ep = r
                        .spec
                        .endpoint
                        .as_deref()
                        .map(|e| format!(" at {e}"))
                        .unwrap_or_default();
                    let sec = if r.include_secrets {
                        ", with secrets"
                    } else {
                        ""
                    };
                    writeln!(
                        out,
                        "{star} {}\t{}{ep}\t{}{sec}",
                        r.name, r.spec.url, r.schedule
                    )?;
                }
            }
            Ok(Outcome::Unchanged)
        }
        RemoteCmd::Remove { name } => {
            let before = remotes.remotes.len();
            remotes.remotes.retain(|r| &r.name != name);
            if remotes.remotes.len() == before {
                bail!("no remote named {name:?}");
            }
            if remotes.default.as_deref() == Some(name.as_str()) {
                remotes.default = None;
            }
            remotes.save(store)?;
            if !json {
                writeln!(out, "removed remote {name} (nothing on it was deleted)")?;
            }
            Ok(Outcome::Changed)
        }
        RemoteCmd::SetDefault { name } => {
            if !remotes.remotes.iter().any(|r| &r.name == name) {
                bail!("no remote named {name:?}");
            }
            remotes.default = Some(name.clone());
            remotes.save(store)?;
            Ok(Outcome::Changed)
        }
        RemoteCmd::Passwd { name } => {
            let entry = remotes.get(Some(name))?.clone();
            let old = passphrase::obtain(pass_file, &format!("remote {name}"))?;
            // One spec: opening stored access keys costs a key derivation.
            let spec = entry.spec_with_keys(Some(&old))?;
            let repo = Repo::open_spec(&spec, &old)?;
            let new = passphrase::obtain_new(&format!("remote {name}"))?;
            let config = repo.change_passphrase(&old, &new)?;
            // The cached config and the sealed access keys follow the new passphrase.
            let e = remotes
                .remotes
                .iter_mut()
                .find(|r| &r.name == name)
                .expect("found above");
            e.config = Some(config);
            if let Some((id, secret)) = &spec.access_key {
                e.access_key = Some(LocalSecret::seal(
                    &new,
                    &format!("access key of {name}"),
                    format!("{id}\n{secret}").as_bytes(),
                )?);
            }
            remotes.save(store)?;
            if !json {
                writeln!(
                    out,
                    "passphrase of {name} changed (the data was not re-uploaded)"
                )?;
            }
            Ok(Outcome::Changed)
        }
        RemoteCmd::Reload => Ok(Outcome::Unchanged),
        RemoteCmd::Devices { name } => {
            let entry = remotes.get(name.as_deref())?.clone();
            let pass = passphrase::obtain(pass_file, &format!("remote {}", entry.name))?;
            let repo = Repo::open_entry(&entry, &pass)?;
            let mut rows = Vec::new();
            for d in repo.devices()? {
                let segs = repo.segments(&d)?;
                let head = segs.last().map(|s| s.1).unwrap_or_default();
                let state: Option<DeviceState> = repo.get_struct(&layout::marks_name(&d)).ok();
                let last = match segs.last() {
                    Some(s) => Some(repo.segment(&s.2)?.pushed_ns),
                    None => None,
                };
                rows.push((d, head, last, state.map(|s| s.marks.len())));
            }
            if json {
                let v: Vec<_> = rows
                    .iter()
                    .map(|(d, h, l, m)| serde_json::json!({"device": d, "head": h.0, "last_push": l.map(crate::when::rfc3339), "marks": m}))
                    .collect();
                serde_json::to_writer(&mut *out, &v)?;
                writeln!(out)?;
            } else {
                for (d, h, l, _) in rows {
                    writeln!(
                        out,
                        "{d}\tepochs 1..{h}\tlast push {}",
                        l.map(crate::when::show_time).unwrap_or_else(|| "-".into())
                    )?;
                }
            }
            Ok(Outcome::Unchanged)
        }
    }
}

/// In the daemon: re-read the remotes file, unlocking with the client's passphrase.
pub fn reload(ctx: &mut crate::commands::Ctx) -> Result<()> {
    let Some(rep) = ctx.live.and_then(|l| l.replicator.clone()) else {
        return Ok(());
    };
    let (tx, rx) = crossbeam_channel::bounded(1);
    rep.send(crate::replicate::replicator::Msg::Reload {
        passphrase: ctx.passphrase.clone(),
        reply: tx,
    })?;
    rx.recv()
        .map_err(|_| anyhow::anyhow!("the replicator stopped"))?
        .map_err(|e| anyhow::anyhow!(e))
}
