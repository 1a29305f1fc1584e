//! The remotes a store replicates to: `<store>/remotes.json`, mode 0600.
//!
//! Holds each remote's URL and options, its push schedule, whether secrets go along, and
//! (only if given) access keys sealed under the passphrase — never plain text.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::crypto::LocalSecret;
use crate::remote::RemoteSpec;
use crate::replicate::{ReplicaError, Result};

/// When a remote is pushed to.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Schedule {
    /// Within seconds of every epoch.
    Continuous,
    /// At the times a cron expression names (`hourly` and `daily` are shorthands).
    Cron(String),
}

impl Schedule {
    /// Parses `continuous`, `hourly`, `daily`, or a cron expression.
    pub fn parse(s: &str) -> Result<Schedule> {
        let expr = match s {
            "continuous" => return Ok(Schedule::Continuous),
            "hourly" => "0 * * * *",
            "daily" => "0 3 * * *",
            other => other,
        };
        expr.parse::<croner::Cron>()
            .map_err(|e| ReplicaError::Usage(format!("schedule {s:?}: {e} (use continuous, hourly, daily or a cron expression such as \"*/30 * * * *\")")))?;
        Ok(Schedule::Cron(expr.to_string()))
    }

    /// The next time (ns since the Unix epoch) a scheduled push is due after `after_ns`.
    pub fn next_after(&self, after_ns: i64) -> Option<i64> {
        match self {
            Schedule::Continuous => Some(after_ns),
            Schedule::Cron(expr) => {
                let cron: croner::Cron = expr.parse().ok()?;
                let t = jiff::Timestamp::from_nanosecond(after_ns as i128).ok()?;
                let zoned = t.to_zoned(jiff::tz::TimeZone::system());
                let next = cron.find_next_occurrence(&zoned, false).ok()?;
                i64::try_from(next.timestamp().as_nanosecond()).ok()
            }
        }
    }
}

impl std::fmt::Display for Schedule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Schedule::Continuous => f.write_str("continuous"),
            Schedule::Cron(e) if e == "0 * * * *" => f.write_str("hourly"),
            Schedule::Cron(e) if e == "0 3 * * *" => f.write_str("daily"),
            Schedule::Cron(e) => write!(f, "cron {e}"),
        }
    }
}

/// One configured remote.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RemoteEntry {
    /// Its name.
    pub name: String,
    /// Where it is.
    pub spec: RemoteSpec,
    /// When to push.
    pub schedule: Schedule,
    /// Whether `credentials/**` and `**/auth-profiles.json` are replicated too.
    pub include_secrets: bool,
    /// Access keys given once, sealed under the passphrase.
    #[serde(default)]
    pub access_key: Option<LocalSecret>,
    /// A copy of the remote's `config` (the master key, wrapped): lets the daemon derive the
    /// keys at start without reaching the remote, then forget the passphrase.
    #[serde(default)]
    pub config: Option<crate::crypto::RepoConfig>,
}

impl RemoteEntry {
    /// A remote named `mem` with no spec, for tests over a memory remote.
    #[cfg(test)]
    pub(crate) fn in_memory() -> RemoteEntry {
        RemoteEntry {
            name: "mem".into(),
            spec: Default::default(),
            schedule: Schedule::Continuous,
            include_secrets: false,
            access_key: None,
            config: None,
        }
    }

    /// The spec with stored access keys opened (when there are some).
    pub fn spec_with_keys(&self, passphrase: Option<&str>) -> Result<RemoteSpec> {
        let mut spec = self.spec.clone();
        if let Some(sealed) = &self.access_key {
            let Some(p) = passphrase else {
                return Err(ReplicaError::NeedPassphrase(format!(
                    "the access keys of remote {}",
                    self.name
                )));
            };
            let plain = sealed
                .open(p, &format!("access key of {}", self.name))
                .map_err(|_| {
                    ReplicaError::WrongPassphrase(format!(
                        "stored access keys of remote {}",
                        self.name
                    ))
                })?;
            let s = String::from_utf8(plain)
                .map_err(|_| ReplicaError::BadObject("stored access keys".into()))?;
            let (id, secret) = s
                .split_once('\n')
                .ok_or_else(|| ReplicaError::BadObject("stored access keys".into()))?;
            spec.access_key = Some((id.to_string(), secret.to_string()));
        }
        Ok(spec)
    }
}

/// Every configured remote.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Remotes {
    /// The one `push`, `restore --from` and `mount --restore-if-empty` use when none is named.
    pub default: Option<String>,
    /// The remotes.
    pub remotes: Vec<RemoteEntry>,
}

fn path(store: &Path) -> PathBuf {
    store.join("remotes.json")
}

impl Remotes {
    /// Loads the remotes of the store at `store` (none when the file does not exist).
    pub fn load(store: &Path) -> Result<Remotes> {
        let p = path(store);
        match std::fs::read(&p) {
            Ok(b) => serde_json::from_slice(&b)
                .map_err(|e| ReplicaError::Usage(format!("{}: {e}", p.display()))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Remotes::default()),
            Err(e) => Err(ReplicaError::Io(format!("reading {}: {e}", p.display()))),
        }
    }

    /// Saves atomically, mode 0600.
    pub fn save(&self, store: &Path) -> Result<()> {
        let p = path(store);
        let tmp = store.join(".remotes.json.tmp");
        let io = |e: std::io::Error| ReplicaError::Io(format!("writing {}: {e}", p.display()));
        crate::store::private_dir(store).map_err(io)?;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(io)?;
        f.write_all(&serde_json::to_vec_pretty(self).expect("encodes"))
            .map_err(io)?;
        f.sync_all().map_err(io)?;
        std::fs::rename(&tmp, &p).map_err(io)?;
        Ok(())
    }

    /// A remote by name, or the default one when `name` is `None`.
    pub fn get(&self, name: Option<&str>) -> Result<&RemoteEntry> {
        let name =
            match name.or(self.default.as_deref()) {
                Some(n) => n,
                None if self.remotes.len() == 1 => &self.remotes[0].name,
                None if self.remotes.is_empty() => {
                    return Err(ReplicaError::Usage(
                        "no remote configured: add one with `clawfs remote add NAME URL`".into(),
                    ))
                }
                None => return Err(ReplicaError::Usage(
                    "several remotes and no default: name one, or `clawfs remote set-default NAME`"
                        .into(),
                )),
            };
        self.remotes.iter().find(|r| r.name == name).ok_or_else(|| {
            ReplicaError::Usage(format!(
                "no remote named {name:?} (see `clawfs remote list`)"
            ))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedules_parse_and_name_their_next_time() {
        assert_eq!(Schedule::parse("continuous").unwrap(), Schedule::Continuous);
        let hourly = Schedule::parse("hourly").unwrap();
        assert_eq!(hourly.to_string(), "hourly");
        let now = crate::store::catalog::now_ns();
        let next = hourly.next_after(now).unwrap();
        assert!(
            next > now && next - now <= 3_600_000_000_000,
            "within the hour"
        );
        let every5 = Schedule::parse("*/5 * * * *").unwrap();
        assert!(every5.next_after(now).unwrap() - now <= 300_000_000_000);
        assert_eq!(Schedule::Continuous.next_after(now), Some(now));
        let err = Schedule::parse("every tuesday").unwrap_err().to_string();
        assert!(err.contains("cron expression"), "{err}");
    }
}
