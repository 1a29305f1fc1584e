//! An unlocked repository on a remote: the remote, its config, and the derived keys.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use crate::crypto::{CryptoError, Keys, RepoConfig};
use crate::remote::{Counting, OpendalRemote, Remote, RemoteError, RemoteSpec, Traffic};
use crate::replicate::layout::{self, LogSegment};
use crate::replicate::settings::RemoteEntry;
use crate::replicate::{ReplicaError, Result};

fn wrong(e: CryptoError, what: &str) -> ReplicaError {
    match e {
        CryptoError::WrongPassphrase => ReplicaError::WrongPassphrase(what.to_string()),
        e => e.into(),
    }
}

fn unlock(config: &RepoConfig, passphrase: &str, what: &str) -> Result<Keys> {
    let master = config.unlock(passphrase).map_err(|e| wrong(e, what))?;
    Ok(Keys::derive(&master))
}

/// A repository opened with its passphrase.
pub struct Repo {
    remote: Counting<Arc<dyn Remote>>,
    config: RepoConfig,
    keys: Keys,
    /// Set once the remote's config is known to carry the current format.
    format_current: AtomicBool,
}

impl Repo {
    /// Opens the repository on `remote`; with `create`, makes one if the remote holds none.
    /// Returns whether it was created.
    pub fn open(remote: Arc<dyn Remote>, passphrase: &str, create: bool) -> Result<(Repo, bool)> {
        match remote.get(layout::CONFIG) {
            Ok(bytes) => {
                let config = RepoConfig::parse(&bytes)?;
                Ok((Repo::from_cached(remote, config, passphrase)?, false))
            }
            Err(RemoteError::NotFound(_)) if create => {
                let (config, master) = RepoConfig::create(passphrase)?;
                remote.put(layout::CONFIG, &config.to_bytes())?;
                let keys = Keys::derive(&master);
                let remote = Counting::new(remote);
                Ok((
                    Repo {
                        remote,
                        config,
                        keys,
                        format_current: AtomicBool::new(true),
                    },
                    true,
                ))
            }
            Err(RemoteError::NotFound(_)) => Err(ReplicaError::NoRepository(remote.describe())),
            Err(e) => Err(e.into()),
        }
    }

    /// Opens a configured remote's repository, reading its `config` from the remote (stored
    /// access keys are opened with the same passphrase).
    pub fn open_entry(entry: &RemoteEntry, passphrase: &str) -> Result<Repo> {
        Repo::open_spec(&entry.spec_with_keys(Some(passphrase))?, passphrase)
    }

    /// Opens the existing repository a spec (with its access keys) points at.
    pub fn open_spec(spec: &RemoteSpec, passphrase: &str) -> Result<Repo> {
        Ok(Repo::open(Arc::new(OpendalRemote::new(spec)?), passphrase, false)?.0)
    }

    /// Opens the repository with a copy of its config (no request is made).
    pub fn from_cached(
        remote: Arc<dyn Remote>,
        config: RepoConfig,
        passphrase: &str,
    ) -> Result<Repo> {
        let remote = Counting::new(remote);
        let keys = unlock(&config, passphrase, &remote.describe())?;
        let format_current = AtomicBool::new(config.upgraded().is_none());
        Ok(Repo {
            remote,
            config,
            keys,
            format_current,
        })
    }

    /// Before writing what only the current format can say: marks a repository of an older
    /// format with the current one, so that a build reading only the older format refuses it
    /// rather than misreads it. The config is read afresh (another machine may have changed
    /// its passphrase since ours was cached) and only its format number changes. Once per
    /// `Repo`, and only for a repository that was older when opened.
    pub fn ensure_current_format(&self) -> Result<()> {
        if self.format_current.load(Ordering::Acquire) {
            return Ok(());
        }
        let remote_config = RepoConfig::parse(&self.remote.get(layout::CONFIG)?)?;
        if let Some(up) = remote_config.upgraded() {
            tracing::info!(
                remote = %self.remote.describe(),
                from = remote_config.format,
                to = up.format,
                "marking the repository with the current format"
            );
            self.remote.put(layout::CONFIG, &up.to_bytes())?;
        }
        self.format_current.store(true, Ordering::Release);
        Ok(())
    }

    /// The repository's config.
    pub fn config(&self) -> &RepoConfig {
        &self.config
    }

    /// The remote, counted.
    pub fn remote(&self) -> &dyn Remote {
        &self.remote
    }

    /// Requests and bytes so far.
    pub fn traffic(&self) -> Traffic {
        self.remote.traffic()
    }

    /// The repository id.
    pub fn id(&self) -> &str {
        &self.config.repo_id
    }

    /// The keys.
    pub fn keys(&self) -> &Keys {
        &self.keys
    }

    /// Re-wraps the master key under a new passphrase; nothing else is rewritten.
    /// Returns the new config.
    pub fn change_passphrase(&self, old: &str, new: &str) -> Result<RepoConfig> {
        let master = self
            .config
            .unlock(old)
            .map_err(|e| wrong(e, &self.remote.describe()))?;
        let cfg = self.config.rewrap(&master, new)?;
        self.remote.put(layout::CONFIG, &cfg.to_bytes())?;
        Ok(cfg)
    }

    /// Seals and uploads an object.
    pub fn put_sealed(&self, name: &str, plain: &[u8]) -> Result<u64> {
        let sealed = self.keys.seal(name, plain);
        self.remote.put(name, &sealed)?;
        Ok(sealed.len() as u64)
    }

    /// Downloads and opens an object; tampering or truncation is an error.
    pub fn get_sealed(&self, name: &str) -> Result<Vec<u8>> {
        let sealed = self.remote.get(name)?;
        Ok(self.keys.open_owned(name, sealed)?)
    }

    /// Downloads, opens and decodes a structured object.
    pub fn get_struct<T: serde::de::DeserializeOwned>(&self, name: &str) -> Result<T> {
        let plain = self.get_sealed(name)?;
        layout::unpack_struct(name, &plain).map_err(ReplicaError::BadObject)
    }

    /// The log of `device`: its segments as they chain, oldest first, as (from, to, name)
    /// ([`layout::chain`]).
    pub fn segments(
        &self,
        device: &str,
    ) -> Result<Vec<(crate::ids::Seq, crate::ids::Seq, String)>> {
        Ok(layout::chain(self.all_segments(device)?))
    }

    /// Every log segment of `device`, chained or not, sorted by (from, to).
    pub fn all_segments(
        &self,
        device: &str,
    ) -> Result<Vec<(crate::ids::Seq, crate::ids::Seq, String)>> {
        let mut segs: Vec<_> = self
            .remote
            .list(&layout::log_prefix(device))?
            .into_iter()
            .filter_map(|n| layout::parse_log_name(&n).map(|(_, a, b)| (a, b, n)))
            .collect();
        segs.sort();
        Ok(segs)
    }

    /// Every device with a log on this remote.
    pub fn devices(&self) -> Result<Vec<String>> {
        let mut devs: Vec<String> = self
            .remote
            .list("log/")?
            .into_iter()
            .filter_map(|n| layout::parse_log_name(&n).map(|(d, _, _)| d))
            .collect();
        devs.sort();
        devs.dedup();
        Ok(devs)
    }

    /// Reads a log segment and checks it is what its name says.
    pub fn segment(&self, name: &str) -> Result<LogSegment> {
        let seg: LogSegment = self.get_struct(name)?;
        let Some((device, from, to)) = layout::parse_log_name(name) else {
            return Err(ReplicaError::BadObject(format!(
                "{name}: not a log segment name"
            )));
        };
        if seg.repo_id != self.config.repo_id
            || seg.device != device
            || seg.from != from
            || seg.to != to
        {
            return Err(ReplicaError::BadObject(format!(
                "{name}: contents do not match the name (from another repository or device?)"
            )));
        }
        // Every seq from `from` to `to`, but for moments the sender had pruned away before
        // pushing: increasing, inside the range, ending at `to`.
        let seqs: Vec<u64> = seg.epochs.iter().map(|e| e.seq.0).collect();
        if seqs.last() != Some(&to.0)
            || seqs.first().is_none_or(|&f| f < from.0)
            || seqs.windows(2).any(|w| w[0] >= w[1])
        {
            return Err(ReplicaError::BadObject(format!(
                "{name}: epochs missing or out of order"
            )));
        }
        if let Some(ix) = seg
            .indexes
            .iter()
            .find(|ix| !ix.starts_with("index/") || ix.contains(".."))
        {
            return Err(ReplicaError::BadObject(format!(
                "{name}: names {ix:?} as an index"
            )));
        }
        Ok(seg)
    }

    /// Reads an index object and checks that every pack it names is one.
    pub fn index(&self, name: &str) -> Result<layout::Index> {
        let index: layout::Index = self.get_struct(name)?;
        if let Some((p, _)) = index
            .packs
            .iter()
            .find(|(p, _)| !p.starts_with("packs/") || p.contains(".."))
        {
            return Err(ReplicaError::BadObject(format!(
                "{name}: names {p:?} as a pack"
            )));
        }
        Ok(index)
    }
}
