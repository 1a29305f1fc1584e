//! Object storage the replicator writes to: a small trait and its implementations.
//!
//! [`Remote`] is the whole contract (put/get/list/delete of named objects). [`OpendalRemote`]
//! speaks to S3-compatible services and plain directories through OpenDAL; [`MemRemote`] keeps
//! objects in memory for unit tests; [`Counting`] wraps any remote and counts requests and
//! bytes, which `push` reports and the benchmark compares with restic.

mod opendal_remote;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::RwLock;

pub use opendal_remote::{OpendalRemote, RemoteSpec};

/// Errors of the remote layer.
#[derive(Debug, thiserror::Error)]
pub enum RemoteError {
    /// The object does not exist ("missing" differs from "empty": an empty object exists).
    #[error("{0} is missing on the remote")]
    NotFound(String),
    /// The URL or options do not describe a remote.
    #[error("{0}")]
    BadSpec(String),
    /// The service refused or could not be reached.
    #[error("{what}: {detail}")]
    Service {
        /// What was being done.
        what: String,
        /// What the service said.
        detail: String,
    },
}

/// Result alias of the remote layer.
pub type Result<T> = std::result::Result<T, RemoteError>;

/// Named objects in a bucket or directory.
///
/// Contract, for every implementation:
/// - `put(name, bytes)` replaces the object atomically: a reader sees the old bytes or the new,
///   never a mix. When it returns the object is stored durably by the service. It is
///   idempotent: putting the same bytes again is harmless.
/// - `get(name)` returns the bytes last put, or [`RemoteError::NotFound`] when there is no such
///   object. An existing empty object is `Ok(vec![])`.
/// - `list(prefix)` returns the names of every object whose name starts with `prefix`
///   (recursively, in no particular order). A prefix with no objects gives an empty list.
/// - `delete(name)` removes an object; deleting a missing object is not an error.
///
/// Names are `/`-separated relative paths of `[a-z0-9-_./]`, never starting with `/`.
pub trait Remote: Send + Sync {
    /// Stores an object.
    fn put(&self, name: &str, data: &[u8]) -> Result<()>;
    /// Reads an object.
    fn get(&self, name: &str) -> Result<Vec<u8>>;
    /// Lists names under a prefix.
    fn list(&self, prefix: &str) -> Result<Vec<String>>;
    /// Deletes an object.
    fn delete(&self, name: &str) -> Result<()>;
    /// A human description for messages ("s3://bucket/prefix at http://…").
    fn describe(&self) -> String;
}

/// Objects in memory: for unit tests of the layers above.
#[derive(Default)]
pub struct MemRemote {
    objects: RwLock<BTreeMap<String, Vec<u8>>>,
}

impl MemRemote {
    /// Changes an object in place, for tamper tests.
    pub fn tamper(&self, name: &str, f: impl FnOnce(&mut Vec<u8>)) {
        if let Some(v) = self.objects.write().get_mut(name) {
            f(v);
        }
    }
}

impl Remote for MemRemote {
    fn put(&self, name: &str, data: &[u8]) -> Result<()> {
        self.objects.write().insert(name.to_string(), data.to_vec());
        Ok(())
    }
    fn get(&self, name: &str) -> Result<Vec<u8>> {
        self.objects
            .read()
            .get(name)
            .cloned()
            .ok_or_else(|| RemoteError::NotFound(name.to_string()))
    }
    fn list(&self, prefix: &str) -> Result<Vec<String>> {
        Ok(self
            .objects
            .read()
            .range(prefix.to_string()..)
            .take_while(|(k, _)| k.starts_with(prefix))
            .map(|(k, _)| k.clone())
            .collect())
    }
    fn delete(&self, name: &str) -> Result<()> {
        self.objects.write().remove(name);
        Ok(())
    }
    fn describe(&self) -> String {
        "memory".into()
    }
}

/// Request and byte counts of a [`Counting`] remote.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct Traffic {
    /// PUT requests.
    pub puts: u64,
    /// GET requests.
    pub gets: u64,
    /// LIST requests.
    pub lists: u64,
    /// DELETE requests.
    pub deletes: u64,
    /// Bytes sent in PUTs.
    pub bytes_up: u64,
    /// Bytes received from GETs.
    pub bytes_down: u64,
}

impl Traffic {
    /// All requests.
    pub fn requests(&self) -> u64 {
        self.puts + self.gets + self.lists + self.deletes
    }

    /// What happened since `earlier` (counts only grow).
    pub fn since(&self, earlier: &Traffic) -> Traffic {
        Traffic {
            puts: self.puts - earlier.puts,
            gets: self.gets - earlier.gets,
            lists: self.lists - earlier.lists,
            deletes: self.deletes - earlier.deletes,
            bytes_up: self.bytes_up - earlier.bytes_up,
            bytes_down: self.bytes_down - earlier.bytes_down,
        }
    }
}

/// Counts the requests and bytes that pass through to `inner`.
pub struct Counting<R> {
    inner: R,
    n: [AtomicU64; 6],
}

impl<R: Remote> Counting<R> {
    /// Wraps a remote.
    pub fn new(inner: R) -> Counting<R> {
        Counting {
            inner,
            n: Default::default(),
        }
    }

    /// The counts so far.
    pub fn traffic(&self) -> Traffic {
        let g = |i: usize| self.n[i].load(Ordering::Relaxed);
        Traffic {
            puts: g(0),
            gets: g(1),
            lists: g(2),
            deletes: g(3),
            bytes_up: g(4),
            bytes_down: g(5),
        }
    }

    fn add(&self, i: usize, v: u64) {
        self.n[i].fetch_add(v, Ordering::Relaxed);
    }
}

impl<R: Remote> Remote for Counting<R> {
    fn put(&self, name: &str, data: &[u8]) -> Result<()> {
        self.add(0, 1);
        self.add(4, data.len() as u64);
        self.inner.put(name, data)
    }
    fn get(&self, name: &str) -> Result<Vec<u8>> {
        self.add(1, 1);
        let v = self.inner.get(name)?;
        self.add(5, v.len() as u64);
        Ok(v)
    }
    fn list(&self, prefix: &str) -> Result<Vec<String>> {
        self.add(2, 1);
        self.inner.list(prefix)
    }
    fn delete(&self, name: &str) -> Result<()> {
        self.add(3, 1);
        self.inner.delete(name)
    }
    fn describe(&self) -> String {
        self.inner.describe()
    }
}

impl<T: Remote + ?Sized> Remote for std::sync::Arc<T> {
    fn put(&self, name: &str, data: &[u8]) -> Result<()> {
        (**self).put(name, data)
    }
    fn get(&self, name: &str) -> Result<Vec<u8>> {
        (**self).get(name)
    }
    fn list(&self, prefix: &str) -> Result<Vec<String>> {
        (**self).list(prefix)
    }
    fn delete(&self, name: &str) -> Result<()> {
        (**self).delete(name)
    }
    fn describe(&self) -> String {
        (**self).describe()
    }
}

#[cfg(test)]
pub(crate) mod tests {
    //! One contract suite, run over every implementation the unit tests can reach; the
    //! integration tests run it over the S3 servers too (through `clawfs` itself).
    use super::*;

    pub(crate) fn contract(r: &dyn Remote) {
        assert!(matches!(r.get("a/missing"), Err(RemoteError::NotFound(_))));
        assert!(r.list("a/").unwrap().is_empty());
        r.put("a/one", b"1").unwrap();
        r.put("a/empty", b"").unwrap();
        r.put("a/b/two", &vec![2u8; 100_000]).unwrap();
        r.put("ab", b"not under a/").unwrap();
        assert_eq!(r.get("a/empty").unwrap(), b"");
        assert_eq!(r.get("a/b/two").unwrap().len(), 100_000);
        r.put("a/one", b"one").unwrap();
        assert_eq!(r.get("a/one").unwrap(), b"one");
        let mut names = r.list("a/").unwrap();
        names.sort();
        assert_eq!(names, vec!["a/b/two", "a/empty", "a/one"]);
        r.delete("a/one").unwrap();
        r.delete("a/one").unwrap();
        assert!(matches!(r.get("a/one"), Err(RemoteError::NotFound(_))));
        let mut names = r.list("a/").unwrap();
        names.sort();
        assert_eq!(names, vec!["a/b/two", "a/empty"]);
    }

    #[test]
    fn memory_remote_keeps_the_contract() {
        contract(&MemRemote::default());
    }

    #[test]
    fn counting_counts() {
        let c = Counting::new(MemRemote::default());
        contract(&c);
        let t = c.traffic();
        assert_eq!(t.puts, 5);
        assert!(t.bytes_up >= 100_000);
        assert_eq!(t.lists, 3);
    }

    #[test]
    fn directory_remote_keeps_the_contract() {
        let d = tempfile::tempdir().unwrap();
        let spec = RemoteSpec::parse(&format!("file://{}", d.path().display())).unwrap();
        contract(&OpendalRemote::new(&spec).unwrap());
    }
}
