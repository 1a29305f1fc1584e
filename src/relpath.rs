//! Paths inside the versioned tree, validated once at the border.

use std::fmt;

use serde::{Deserialize, Serialize};

/// A normalised path relative to the root of the versioned tree: components separated by `/`,
/// none empty, `.` or `..`, no NUL, no leading `/`. The root itself is the empty path.
///
/// Every path that comes from outside (a CLI argument, a remote log segment, a FUSE name) becomes
/// a `RelPath` through [`RelPath::new`], so nothing below can be walked out of the tree.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Default, Serialize, Deserialize)]
pub struct RelPath(String);

/// Why a string is not a path inside the tree.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PathError {
    /// Absolute paths name something outside the tree.
    #[error("{0:?} is an absolute path; give a path inside the tree")]
    Absolute(String),
    /// `..` could leave the tree.
    #[error("{0:?} contains '..'; give a path inside the tree")]
    DotDot(String),
    /// NUL cannot appear in a file name.
    #[error("{0:?} contains a NUL byte")]
    Nul(String),
    /// File names are bytes on disk, but the catalogue keeps them as UTF-8.
    #[error("a path is not valid UTF-8: {0}")]
    NotUtf8(String),
}

impl RelPath {
    /// The root of the tree.
    pub fn root() -> RelPath {
        RelPath(String::new())
    }

    /// Validates and normalises `s` (drops `.` components, repeated and trailing slashes).
    pub fn new(s: &str) -> Result<RelPath, PathError> {
        if s.starts_with('/') {
            return Err(PathError::Absolute(s.to_string()));
        }
        if s.contains('\0') {
            return Err(PathError::Nul(s.to_string()));
        }
        let mut parts = Vec::new();
        for comp in s.split('/') {
            match comp {
                "" | "." => continue,
                ".." => return Err(PathError::DotDot(s.to_string())),
                c => parts.push(c),
            }
        }
        Ok(RelPath(parts.join("/")))
    }

    /// The path as text, without a leading slash (`""` for the root).
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// True for the root of the tree.
    pub fn is_root(&self) -> bool {
        self.0.is_empty()
    }

    /// `self/name`; `name` must be a single valid component.
    pub fn join(&self, name: &str) -> Result<RelPath, PathError> {
        if name.is_empty() || name == "." || name == ".." || name.contains('/') {
            return Err(PathError::DotDot(format!("{}/{name}", self.0)));
        }
        if name.contains('\0') {
            return Err(PathError::Nul(name.to_string()));
        }
        Ok(if self.0.is_empty() {
            RelPath(name.to_string())
        } else {
            RelPath(format!("{}/{name}", self.0))
        })
    }

    /// The parent directory and the last component; `None` for the root.
    pub fn split(&self) -> Option<(RelPath, &str)> {
        if self.0.is_empty() {
            return None;
        }
        Some(match self.0.rfind('/') {
            Some(i) => (RelPath(self.0[..i].to_string()), &self.0[i + 1..]),
            None => (RelPath::root(), self.0.as_str()),
        })
    }

    /// The path beside this one named as this one with `suffix` appended (SQLite's `-wal`,
    /// `-shm` and `-journal` beside a database); `None` for the root or a suffix no name can
    /// end with.
    pub fn with_suffix(&self, suffix: &str) -> Option<RelPath> {
        let (parent, name) = self.split()?;
        parent.join(&format!("{name}{suffix}")).ok()
    }

    /// The last component (`""` for the root).
    pub fn name(&self) -> &str {
        self.split().map(|(_, n)| n).unwrap_or("")
    }

    /// True if `self` is `other` or lies below it.
    pub fn starts_with(&self, other: &RelPath) -> bool {
        other.0.is_empty()
            || self.0 == other.0
            || (self.0.starts_with(&other.0) && self.0.as_bytes()[other.0.len()] == b'/')
    }
}

impl fmt::Display for RelPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() {
            f.write_str(".")
        } else {
            f.write_str(&self.0)
        }
    }
}

impl fmt::Debug for RelPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rstest::rstest;

    #[rstest]
    #[case("a/b", Ok("a/b"))]
    #[case("./a//b/", Ok("a/b"))]
    #[case("", Ok(""))]
    #[case("/etc/passwd", Err(PathError::Absolute("/etc/passwd".into())))]
    #[case("a/../../b", Err(PathError::DotDot("a/../../b".into())))]
    #[case("..", Err(PathError::DotDot("..".into())))]
    #[case("a\0b", Err(PathError::Nul("a\0b".into())))]
    fn paths_are_validated(#[case] input: &str, #[case] want: Result<&str, PathError>) {
        assert_eq!(
            RelPath::new(input).map(|p| p.as_str().to_string()),
            want.map(str::to_string)
        );
    }

    #[test]
    fn split_and_join() {
        let p = RelPath::new("a/b/c").unwrap();
        let (parent, name) = p.split().unwrap();
        assert_eq!((parent.as_str(), name), ("a/b", "c"));
        assert_eq!(parent.join("c").unwrap(), p);
        assert!(p.starts_with(&RelPath::new("a").unwrap()));
        assert!(!RelPath::new("ab")
            .unwrap()
            .starts_with(&RelPath::new("a").unwrap()));
        assert!(RelPath::root().join("..").is_err());
    }
}
