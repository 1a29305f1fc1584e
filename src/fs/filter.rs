//! Which paths are versioned.
//!
//! Regenerable or volatile paths are passed through but not versioned: SQLite `-shm` files
//! (rebuilt by SQLite), media, caches, installed npm packages, lock files and temp dirs. Users add
//! gitignore-style patterns in the store's `config.json` (`"ignore": [...]`); a pattern starting
//! with `!` versions what an earlier pattern excluded.

use globset::{Candidate, Glob, GlobSet, GlobSetBuilder};

/// Patterns not versioned by default.
pub const DEFAULT_IGNORES: &[&str] = &[
    "**/*-shm",
    "media/**",
    "cache/**",
    "plugin-runtime-deps/**",
    "**/*.lock",
    "tmp/**",
];

/// Decides, for a path relative to the tree root, whether it is versioned.
#[derive(Clone, Debug)]
pub struct Filter {
    /// Every rule's globs, matched in one pass (the overlay asks for each write and create).
    globs: GlobSet,
    /// For each glob of `globs`, in rule order: true when a match means "not versioned".
    ignores: Vec<bool>,
}

impl Filter {
    /// The default rules followed by `extra` (gitignore-style; `!` negates).
    pub fn new(extra: &[String]) -> Result<Filter, globset::Error> {
        let mut globs = GlobSetBuilder::new();
        let mut ignores = Vec::new();
        let all = DEFAULT_IGNORES
            .iter()
            .map(|s| s.to_string())
            .chain(extra.iter().cloned());
        for pat in all {
            let (neg, p) = match pat.strip_prefix('!') {
                Some(rest) => (true, rest.to_string()),
                None => (false, pat.clone()),
            };
            let p = p.trim_start_matches('/');
            // `dir/` and bare names match at any depth and everything below, as in gitignore.
            let p = p.trim_end_matches('/');
            let mut expanded = vec![p.to_string(), format!("{p}/**")];
            // `cache/**` also covers the directory `cache` itself.
            if let Some(dir) = p.strip_suffix("/**") {
                expanded.push(dir.to_string());
            }
            if !p.contains('/') {
                expanded.push(format!("**/{p}"));
                expanded.push(format!("**/{p}/**"));
            }
            for g in expanded {
                globs.add(Glob::new(&g)?);
                ignores.push(!neg);
            }
        }
        Ok(Filter {
            globs: globs.build()?,
            ignores,
        })
    }

    /// True when changes to `path` are recorded.
    pub fn versioned(&self, path: &str) -> bool {
        if path.is_empty() {
            return true;
        }
        let path = Candidate::new(path);
        if !self.globs.is_match_candidate(&path) {
            return true;
        }
        // The last rule that matches decides, as in gitignore.
        let last = self.globs.matches_candidate(&path).into_iter().max();
        !last.is_some_and(|i| self.ignores[i])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rstest::rstest;

    #[rstest]
    #[case("state/openclaw.sqlite", true)]
    #[case("state/openclaw.sqlite-wal", true)]
    #[case("state/openclaw.sqlite-shm", false)]
    #[case("cache/control-ui-assets/abc/x.js", false)]
    #[case("cache", false)]
    #[case("tmp", false)]
    #[case("cachefile", true)]
    #[case("plugin-runtime-deps/node_modules/a/index.js", false)]
    #[case("openclaw.json.lock", false)]
    #[case("workspace/MEMORY.md", true)]
    #[case("tmp/x", false)]
    #[case("media/a.png", false)]
    #[case("notes/tmp/x", true)]
    fn defaults(#[case] path: &str, #[case] versioned: bool) {
        assert_eq!(
            Filter::new(&[]).unwrap().versioned(path),
            versioned,
            "{path}"
        );
    }

    #[test]
    fn user_patterns_add_and_negate() {
        let f = Filter::new(&["*.log".into(), "big/".into(), "!cache/keep/**".into()]).unwrap();
        assert!(!f.versioned("a/b/run.log"));
        assert!(!f.versioned("big/x"));
        assert!(!f.versioned("sub/big/x"));
        assert!(f.versioned("cache/keep/x"));
        assert!(!f.versioned("cache/other"));
    }
}
