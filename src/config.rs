//! Where things live: the state directory, its store, and the store's settings.
//!
//! One store per mounted directory, outside it: `$XDG_DATA_HOME/clawfs/<name>-<hash>` (else
//! `~/.local/share/clawfs/...`), where `<hash>` is of the directory's absolute path. `--store`
//! overrides. The store's `config.json` records the directory and the user's ignore patterns.

use std::path::{Component, Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Settings kept in `<store>/config.json`.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct StoreConfig {
    /// The directory this store versions.
    #[serde(default)]
    pub dir: Option<PathBuf>,
    /// Extra gitignore-style patterns of paths not to version (`!` re-includes).
    #[serde(default)]
    pub ignore: Vec<String>,
}

impl StoreConfig {
    /// Reads the store's settings (defaults when there are none).
    pub fn load(store: &Path) -> std::io::Result<StoreConfig> {
        match std::fs::read(store.join("config.json")) {
            Ok(b) => serde_json::from_slice(&b).map_err(|e| {
                std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!("{}: {e}", store.join("config.json").display()),
                )
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(StoreConfig::default()),
            Err(e) => Err(e),
        }
    }

    /// Writes the settings atomically.
    pub fn save(&self, store: &Path) -> std::io::Result<()> {
        crate::store::private_dir(store)?;
        let tmp = store.join("config.json.tmp");
        std::fs::write(&tmp, serde_json::to_vec_pretty(self).expect("encode"))?;
        std::fs::rename(tmp, store.join("config.json"))
    }
}

/// The state directory when none is named: `$OPENCLAW_STATE_DIR`, else `~/.openclaw`.
pub fn default_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("OPENCLAW_STATE_DIR") {
        return PathBuf::from(d);
    }
    home().join(".openclaw")
}

fn home() -> PathBuf {
    std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/"))
}

/// The default store of directory `dir` (an absolute path).
pub fn default_store(dir: &Path) -> PathBuf {
    let base = std::env::var_os("XDG_DATA_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| home().join(".local/share"));
    let name = dir
        .file_name()
        .map(|n| n.to_string_lossy().trim_start_matches('.').to_string())
        .filter(|n| !n.is_empty())
        .unwrap_or_else(|| "root".into());
    let hash = hex::encode(&Sha256::digest(dir.as_os_str().as_encoded_bytes())[..6]);
    base.join("clawfs").join(format!("{name}-{hash}"))
}

/// `p` made absolute against `cwd` and cleaned of `.` and `..` without touching the disk (the
/// path may not exist any more).
pub fn absolute(p: &Path, cwd: &Path) -> PathBuf {
    let joined = if p.is_absolute() {
        p.to_path_buf()
    } else {
        cwd.join(p)
    };
    let mut out = PathBuf::from("/");
    for c in joined.components() {
        match c {
            Component::ParentDir => {
                out.pop();
            }
            Component::Normal(n) => out.push(n),
            _ => {}
        }
    }
    out
}

/// The socket a running daemon listens on.
pub fn socket_path(store: &Path) -> PathBuf {
    store.join("control.sock")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn absolute_paths_are_cleaned_lexically() {
        let cwd = Path::new("/home/u/.openclaw/workspace");
        assert_eq!(
            absolute(Path::new("../x/./y"), cwd),
            Path::new("/home/u/.openclaw/x/y")
        );
        assert_eq!(absolute(Path::new("/a/b/../c"), cwd), Path::new("/a/c"));
    }

    #[test]
    fn stores_differ_per_directory() {
        let a = default_store(Path::new("/home/u/.openclaw"));
        let b = default_store(Path::new("/home/v/.openclaw"));
        assert_ne!(a, b);
        assert!(a.to_string_lossy().contains("clawfs/openclaw-"));
    }
}
