//! Sorted, immutable index files named by the range they answer for (`<lo>-<hi>.idx`, 16 hex
//! digits each): what the chunk index and the version index share. A file is written whole
//! under a temporary name, synced and renamed; files are merged two at a time, newest last,
//! the merged file first and the old ones removed after, so a crash between leaves files whose
//! ranges lie inside the merged one's, which [`list`] removes.

use std::fs::File;
use std::io::{BufReader, Read};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use parking_lot::RwLock;

use crate::store::error::{IoContext, Result, StoreError};

/// Name of the file for range `lo..=hi`.
pub fn file_name(lo: u64, hi: u64) -> String {
    format!("{lo:016x}-{hi:016x}.idx")
}

/// The range a file name names.
pub fn parse_name(name: &str) -> Option<(u64, u64)> {
    let (lo, hi) = name.strip_suffix(".idx")?.split_once('-')?;
    let (lo, hi) = (
        u64::from_str_radix(lo, 16).ok()?,
        u64::from_str_radix(hi, 16).ok()?,
    );
    (lo <= hi).then_some((lo, hi))
}

/// The files in `dir` (created, private, when absent), by range: temporary files a crash cut
/// short and files whose range lies inside another's are removed first.
pub fn list(dir: &Path) -> Result<Vec<(u64, u64, PathBuf)>> {
    crate::store::private_dir(dir).ctx(|| format!("creating {}", dir.display()))?;
    let mut found: Vec<(u64, u64, PathBuf)> = Vec::new();
    for e in std::fs::read_dir(dir).ctx(|| format!("listing {}", dir.display()))? {
        let e = e.ctx(|| format!("listing {}", dir.display()))?;
        let name = e.file_name();
        let name = name.to_string_lossy();
        if name.starts_with(".tmp-") {
            let _ = std::fs::remove_file(e.path());
        } else if let Some((lo, hi)) = parse_name(&name) {
            found.push((lo, hi, e.path()));
        }
    }
    found.sort_by_key(|&(lo, hi, _)| (lo, std::cmp::Reverse(hi)));
    let mut kept: Vec<(u64, u64, PathBuf)> = Vec::new();
    for (lo, hi, path) in found {
        if kept.iter().any(|&(l, h, _)| l <= lo && hi <= h) {
            std::fs::remove_file(&path).ctx(|| format!("removing {}", path.display()))?;
        } else {
            kept.push((lo, hi, path));
        }
    }
    Ok(kept)
}

/// A file being written for range `lo..=hi`, under a temporary name until [`install`](Self::install).
pub struct NewFile {
    /// The file, mode 0600.
    pub file: File,
    tmp: PathBuf,
    path: PathBuf,
    dir: PathBuf,
}

impl NewFile {
    /// Creates the temporary file.
    pub fn create(dir: &Path, lo: u64, hi: u64) -> Result<NewFile> {
        let name = file_name(lo, hi);
        let tmp = dir.join(format!(".tmp-{name}"));
        let file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .ctx(|| format!("creating {}", tmp.display()))?;
        Ok(NewFile {
            file,
            tmp,
            path: dir.join(name),
            dir: dir.to_path_buf(),
        })
    }

    /// The error of a failed write.
    pub fn error(&self, e: std::io::Error) -> StoreError {
        StoreError::Io {
            what: format!("writing {}", self.tmp.display()),
            source: e,
        }
    }

    /// Syncs the file and renames it into place; returns its final path.
    pub fn install(self) -> Result<PathBuf> {
        self.file.sync_all().map_err(|e| self.error(e))?;
        drop(self.file);
        std::fs::rename(&self.tmp, &self.path)
            .ctx(|| format!("renaming {}", self.tmp.display()))?;
        File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .ctx(|| format!("syncing {}", self.dir.display()))?;
        Ok(self.path)
    }
}

/// What every index file is: the range it covers (`lo..=hi`, packs or epochs), how many
/// entries it holds, the open file and its path.
pub struct RunBase {
    /// First of the range it covers.
    pub lo: u64,
    /// Last of the range it covers.
    pub hi: u64,
    /// Its entries.
    pub count: u64,
    /// The open file.
    pub file: File,
    /// Its path.
    pub path: PathBuf,
}

impl RunBase {
    /// The file at `path`, open as `file`, covering `lo..=hi` with `count` entries.
    pub fn new(path: &Path, lo: u64, hi: u64, count: u64, file: File) -> RunBase {
        RunBase {
            lo,
            hi,
            count,
            file,
            path: path.to_path_buf(),
        }
    }

    /// The entries of `size` bytes after a header of `header` bytes, read in order and
    /// decoded (a decoding error is the entry's).
    pub fn entries<'a, T>(
        &'a self,
        header: usize,
        size: usize,
        decode: impl Fn(&[u8]) -> Result<T> + 'a,
    ) -> Result<impl Iterator<Item = Result<T>> + 'a> {
        let path = &self.path;
        let mut r = BufReader::with_capacity(1 << 20, &self.file);
        let mut skip = vec![0u8; header];
        r.read_exact(&mut skip)
            .ctx(|| format!("reading {}", path.display()))?;
        let mut left = self.count;
        let mut e = vec![0u8; size];
        Ok(std::iter::from_fn(move || {
            (left > 0).then(|| {
                left -= 1;
                r.read_exact(&mut e)
                    .ctx(|| format!("reading {}", path.display()))?;
                decode(&e)
            })
        }))
    }
}

/// Two sorted runs of entries as one, by `key`; an error ends the merge where it stands.
pub fn merge_sorted<'a, T: 'a, K: Ord>(
    x: impl Iterator<Item = Result<T>> + 'a,
    y: impl Iterator<Item = Result<T>> + 'a,
    key: impl Fn(&T) -> K + 'a,
) -> impl Iterator<Item = Result<T>> + 'a {
    let (mut x, mut y) = (x.peekable(), y.peekable());
    std::iter::from_fn(move || match (x.peek(), y.peek()) {
        (Some(Ok(p)), Some(Ok(q))) => {
            if key(p) <= key(q) {
                x.next()
            } else {
                y.next()
            }
        }
        (Some(_), _) => x.next(),
        (None, _) => y.next(),
    })
}

/// An index file of either index: what [`merge_newest`] and [`totals`] need of it.
pub trait RunFile {
    /// Its range, entries, file and path.
    fn base(&self) -> &RunBase;
}

/// Files, entries in them and their bytes.
pub fn totals<R: RunFile>(runs: &RwLock<Vec<Arc<R>>>) -> (usize, u64, u64) {
    let runs = runs.read();
    (
        runs.len(),
        runs.iter().map(|r| r.base().count).sum(),
        runs.iter()
            .map(|r| r.base().file.metadata().map(|m| m.len()).unwrap_or(0))
            .sum(),
    )
}

/// Merges the two newest files into one while `worth(older, newer, files)` says so; `merge`
/// writes the merged file. The old files are removed once the merged one is in the list.
pub fn merge_newest<R: RunFile>(
    runs: &RwLock<Vec<Arc<R>>>,
    worth: impl Fn(&R, &R, usize) -> bool,
    merge: impl Fn(&R, &R) -> Result<R>,
) -> Result<()> {
    loop {
        let list = runs.read().clone();
        let n = list.len();
        if n < 2 || !worth(&list[n - 2], &list[n - 1], n) {
            return Ok(());
        }
        let merged = merge(&list[n - 2], &list[n - 1])?;
        {
            let mut w = runs.write();
            w.truncate(n - 2);
            w.push(Arc::new(merged));
        }
        for old in &list[n - 2..] {
            let path = &old.base().path;
            std::fs::remove_file(path).ctx(|| format!("removing {}", path.display()))?;
        }
    }
}
