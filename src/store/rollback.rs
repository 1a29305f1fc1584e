//! Differences between moments, and rollbacks planned and applied as new versions.
//!
//! A rollback never rewrites history (invariant 6): it records a safety mark at the current
//! moment, then writes the old content back into the real tree file by file (temp file and
//! rename, like the writers themselves) and records each as a new `restore` version whose
//! content is shared with the old one. `clawfs rollback --to <safety mark>` undoes it.

use std::collections::{BTreeMap, HashMap};

use serde::Serialize;

use crate::ids::{NodeId, Seq};
use crate::realfs::RealTree;
use crate::relpath::RelPath;
use crate::store::catalog::{now_ns, Mark, NodeKind, NodeVersion};
use crate::store::error::{Result, StoreError};
use crate::store::query::Entry;
use crate::store::recorder::{MetaUpdate, Recorder};
use crate::store::Store;

/// How a path differs between two moments.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DiffKind {
    /// Exists at the later moment only.
    Created,
    /// Exists at both, with other content, target or mode.
    Modified,
    /// Exists at the earlier moment only.
    Deleted,
    /// The same file, directory or symlink under another path (`from`) at the earlier moment;
    /// its content may differ too (`same` says).
    Renamed,
}

/// One path that differs.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct DiffEntry {
    /// The path.
    pub path: String,
    /// How it differs.
    pub change: DiffKind,
    /// What it is (at the later moment if it exists then).
    pub kind: NodeKind,
    /// Size at the earlier moment.
    pub old_size: Option<u64>,
    /// Size at the later moment.
    pub new_size: Option<u64>,
    /// Renamed: the path it had at the earlier moment.
    pub from: Option<String>,
    /// Renamed: whether its content (or target, or a directory's mode) is unchanged.
    pub same: Option<bool>,
}

/// What a rollback does to one path.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ActionKind {
    /// Put back the old content of a path that exists now.
    Restore,
    /// Bring back a path that does not exist now.
    Recreate,
    /// Remove a path that did not exist then.
    Remove,
}

/// One step of a rollback plan.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Action {
    /// The path.
    pub path: String,
    /// What happens to it.
    pub action: ActionKind,
    /// What it is (then, or now for removals).
    pub kind: NodeKind,
    /// Size now.
    pub size_now: Option<u64>,
    /// Size it gets back.
    pub size_then: Option<u64>,
    /// A file put back as a further name (hard link) of this path, one it had then and has
    /// again once the steps before this one are taken.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub link_to: Option<String>,
    #[serde(skip)]
    then: Option<NodeVersion>,
}

/// What a rollback would do, computed without changing anything.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Plan {
    /// The moment rolled back to.
    pub target: Seq,
    /// The moment the plan was made against.
    pub head: Seq,
    /// The steps, in the order they are applied.
    pub actions: Vec<Action>,
    /// Secret paths that differ but are left alone (without `--include-secrets`).
    pub skipped_secrets: Vec<String>,
}

/// What applying a plan did.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Applied {
    /// The safety mark recorded first: roll back to it to undo.
    pub safety_mark: String,
    /// The epoch holding the rollback.
    pub seq: Seq,
    /// Steps applied.
    pub applied: usize,
    /// Directories left in place because they hold files that are not versioned.
    pub kept: Vec<String>,
}

/// True for paths that hold credentials: versioned locally, never rolled back or replicated
/// unless asked for by name or with `--include-secrets`.
pub fn is_secret(path: &RelPath) -> bool {
    let p = path.as_str();
    p == "credentials" || p.starts_with("credentials/") || path.name() == "auth-profiles.json"
}

impl Store {
    fn tree(&self, scope: &[RelPath], seq: Seq) -> Result<BTreeMap<RelPath, Entry>> {
        let mut out = BTreeMap::new();
        for root in scope {
            for (p, e) in self.walk(root, seq)? {
                out.insert(p, e);
            }
        }
        Ok(out)
    }

    /// Paths under `scope` (the whole tree if empty) that differ between `from` and `to`.
    pub fn diff(&self, from: Seq, to: Seq, scope: &[RelPath]) -> Result<Vec<DiffEntry>> {
        let scope = if scope.is_empty() {
            vec![RelPath::root()]
        } else {
            scope.to_vec()
        };
        let (a, b) = (self.tree(&scope, from)?, self.tree(&scope, to)?);
        // Nodes keep their id through renames: one gone from a path and found at a new one
        // (once each: not a hard link) was renamed.
        let mut gone: HashMap<NodeId, Vec<&RelPath>> = HashMap::new();
        for (p, old) in a.iter().filter(|(p, _)| !b.contains_key(*p)) {
            gone.entry(old.node).or_default().push(p);
        }
        let mut arrived: HashMap<NodeId, Vec<&RelPath>> = HashMap::new();
        for (p, new) in b.iter().filter(|(p, _)| !a.contains_key(*p)) {
            arrived.entry(new.node).or_default().push(p);
        }
        let renamed_from = |node: NodeId| match (gone.get(&node), arrived.get(&node)) {
            (Some(g), Some(n)) if g.len() == 1 && n.len() == 1 => Some(g[0]),
            _ => None,
        };
        let entry =
            |path: &RelPath, change, kind, old: Option<&Entry>, new: Option<&Entry>| DiffEntry {
                path: path.as_str().into(),
                change,
                kind,
                old_size: old.map(|e| e.version.size()),
                new_size: new.map(|e| e.version.size()),
                from: None,
                same: None,
            };
        let mut out = Vec::new();
        for (p, old) in &a {
            match b.get(p) {
                None if renamed_from(old.node).is_some() => {}
                None => out.push(entry(
                    p,
                    DiffKind::Deleted,
                    old.version.kind,
                    Some(old),
                    None,
                )),
                Some(new) if !p.is_root() && differs(old, new) => out.push(entry(
                    p,
                    DiffKind::Modified,
                    new.version.kind,
                    Some(old),
                    Some(new),
                )),
                _ => {}
            }
        }
        for (p, new) in b.iter().filter(|(p, _)| !a.contains_key(*p)) {
            match renamed_from(new.node) {
                Some(was) => {
                    let old = &a[was];
                    out.push(DiffEntry {
                        from: Some(was.as_str().into()),
                        same: Some(!differs(old, new)),
                        ..entry(p, DiffKind::Renamed, new.version.kind, Some(old), Some(new))
                    });
                }
                None => out.push(entry(
                    p,
                    DiffKind::Created,
                    new.version.kind,
                    None,
                    Some(new),
                )),
            }
        }
        out.sort_by(|x, y| x.path.cmp(&y.path));
        Ok(out)
    }

    /// What rolling `scope` (the whole tree if empty) back to `target` would do. A SQLite
    /// database in scope brings its `-wal` and `-journal` along, so both come from one moment.
    pub fn plan_rollback(
        &self,
        target: Seq,
        scope: &[RelPath],
        include_secrets: bool,
    ) -> Result<Plan> {
        let head = self.head();
        if target > head {
            return Err(StoreError::NoSuchMoment(format!(
                "moment {target} is not recorded yet (newest is {head})"
            )));
        }
        let named: Vec<RelPath> = scope.to_vec();
        let mut scope: Vec<RelPath> = if scope.is_empty() {
            vec![RelPath::root()]
        } else {
            scope.to_vec()
        };
        for p in &named {
            scope.extend(["-wal", "-journal"].iter().filter_map(|s| p.with_suffix(s)));
        }
        let (then, now) = (self.tree(&scope, target)?, self.tree(&scope, head)?);
        // A path that is in neither tree is a typo, not a file already as it was.
        if let Some(p) = named
            .iter()
            .find(|p| !p.is_root() && !then.contains_key(*p) && !now.contains_key(*p))
        {
            return Err(StoreError::NeverThere {
                path: p.as_str().to_string(),
                seq: target,
            });
        }
        let secret_ok = |p: &RelPath| {
            include_secrets
                || !is_secret(p)
                || named.iter().any(|n| is_secret(n) && p.starts_with(n))
        };
        let mut removes = Vec::new();
        let mut puts = Vec::new();
        let mut skipped = Vec::new();
        for (p, cur) in &now {
            if p.is_root() {
                continue;
            }
            let old = then.get(p);
            let action = match old {
                None => Some(ActionKind::Remove),
                Some(o) if o.version.kind != cur.version.kind => Some(ActionKind::Remove),
                _ => None,
            };
            if let Some(a) = action {
                if !secret_ok(p) {
                    skipped.push(p.as_str().to_string());
                    continue;
                }
                removes.push(Action {
                    path: p.as_str().into(),
                    action: a,
                    kind: cur.version.kind,
                    size_now: Some(cur.version.size()),
                    size_then: None,
                    link_to: None,
                    then: None,
                });
            }
        }
        // Which names are one file's (hard links), among the files at both moments: a file
        // whose names were one file's then and are not now (or the other way round) is put
        // back, so that they are again.
        let (links_then, links_now) = (Links::of(&then, &now), Links::of(&now, &then));
        let mut unchanged = std::collections::HashSet::new();
        for (p, old) in &then {
            if p.is_root() {
                continue;
            }
            let cur = now.get(p).filter(|c| c.version.kind == old.version.kind);
            let action = match cur {
                None => ActionKind::Recreate,
                Some(c) if differs(old, c) => ActionKind::Restore,
                Some(c) if !links_then.names(old.node).eq(links_now.names(c.node)) => {
                    ActionKind::Restore
                }
                Some(_) => {
                    unchanged.insert(p);
                    continue;
                }
            };
            if !secret_ok(p) {
                skipped.push(p.as_str().to_string());
                continue;
            }
            puts.push(Action {
                path: p.as_str().into(),
                action,
                kind: old.version.kind,
                size_now: cur.map(|c| c.version.size()),
                size_then: Some(old.version.size()),
                link_to: None,
                then: Some(old.version.clone()),
            });
        }
        // A file with several names then is put back once and linked under its other names,
        // or linked to a name of it that is unchanged.
        let mut put_as: HashMap<NodeId, String> = HashMap::new();
        for a in puts.iter_mut().filter(|a| a.kind == NodeKind::File) {
            let node = then[&RelPath::new(&a.path)?].node;
            if let Some(first) = put_as.get(&node) {
                a.link_to = Some(first.clone());
            } else if let Some(q) = links_then.names(node).find(|q| unchanged.contains(q)) {
                a.link_to = Some(q.as_str().to_string());
                put_as.insert(node, q.as_str().to_string());
            } else {
                put_as.insert(node, a.path.clone());
            }
        }
        // Deepest first for removals; parents first (BTreeMap order) for the rest. A path whose
        // kind changed is removed and then recreated.
        removes.sort_by(|a, b| b.path.cmp(&a.path));
        for r in &removes {
            if r.action == ActionKind::Remove {
                for p in puts.iter_mut().filter(|p| p.path == r.path) {
                    p.action = ActionKind::Recreate;
                }
            }
        }
        skipped.sort();
        skipped.dedup();
        let mut actions = removes;
        actions.extend(puts);
        Ok(Plan {
            target,
            head,
            actions,
            skipped_secrets: skipped,
        })
    }
}

/// The files of a tree by node, among the paths that are files in another tree too.
struct Links<'a>(HashMap<NodeId, Vec<&'a RelPath>>);

impl<'a> Links<'a> {
    fn of(tree: &'a BTreeMap<RelPath, Entry>, other: &BTreeMap<RelPath, Entry>) -> Links<'a> {
        let file = |e: &Entry| e.version.kind == NodeKind::File;
        let mut by_node: HashMap<NodeId, Vec<&RelPath>> = HashMap::new();
        for (p, e) in tree {
            if file(e) && other.get(p).is_some_and(file) {
                by_node.entry(e.node).or_default().push(p);
            }
        }
        Links(by_node)
    }

    /// The names `node` has (in path order).
    fn names(&self, node: NodeId) -> impl Iterator<Item = &'a RelPath> + '_ {
        self.0.get(&node).into_iter().flatten().copied()
    }
}

fn differs(a: &Entry, b: &Entry) -> bool {
    match a.version.kind {
        NodeKind::Dir => a.version.meta.mode != b.version.meta.mode,
        _ => !a.version.same_data(&b.version),
    }
}

/// Applies `plan` to the real tree and records it, all on this thread: [`begin_rollback`],
/// [`put_back`], then [`record_rollback`]. A mounted tree takes the three steps apart, as
/// `put_back` must not run on the recorder's thread there.
pub fn apply_rollback(rec: &mut Recorder, plan: &Plan, tree: &RealTree) -> Result<Applied> {
    let safety = begin_rollback(rec, plan)?;
    let put = put_back(rec.store(), plan, tree);
    record_rollback(rec, plan, safety, put)
}

/// The first step of a rollback: commits what is pending, refuses a plan made against
/// another head (the tree changed since the preview), and records the safety mark, whose name
/// it returns.
pub fn begin_rollback(rec: &mut Recorder, plan: &Plan) -> Result<String> {
    rec.commit(false)?;
    let store = rec.store();
    if store.head() != plan.head {
        return Err(StoreError::NoSuchMoment(format!(
            "the tree changed since this rollback was planned (at {}, now {}); plan it again",
            plan.head,
            store.head()
        )));
    }
    let safety = unique_mark_name(store, &format!("safety-{}", plan.head))?;
    store.add_mark(&Mark {
        name: safety.clone(),
        seq: plan.head,
        time_ns: now_ns(),
        message: format!("before rollback to {}", plan.target),
        safety: true,
    })?;
    Ok(safety)
}

/// What [`put_back`] did to the real tree, for [`record_rollback`].
#[derive(Debug)]
pub struct PutBack {
    /// The plan's steps that were taken, by index, in order.
    done: Vec<(usize, Done)>,
    /// The step that failed, stopping the rest: its path and error.
    failed: Option<(String, std::io::Error)>,
}

/// What became of one step.
#[derive(Clone, Copy, Debug)]
enum Done {
    /// The path was removed.
    Removed,
    /// The path to remove was gone already.
    Gone,
    /// A directory to remove still holds files that are not versioned: it stays.
    Kept,
    /// The old directory, symlink or file is back.
    Put,
    /// The file is back as a further name of the one at the action's `link_to`.
    Linked,
}

/// The second step: writes the plan into the real tree, file by file (temp file, synced,
/// renamed into place), and removes the `-shm` beside a restored database. Stops at the first
/// step that fails. Changes the real tree only, records nothing: with a tree seen through the
/// mount, its requests go through the daemon, so it must not run on the recorder's thread.
pub fn put_back(store: &Store, plan: &Plan, tree: &RealTree) -> PutBack {
    let mut out = PutBack {
        done: Vec::new(),
        failed: None,
    };
    for (i, a) in plan.actions.iter().enumerate() {
        let path = match RelPath::new(&a.path) {
            Ok(p) => p,
            Err(e) => {
                let e = std::io::Error::new(std::io::ErrorKind::InvalidInput, e.to_string());
                out.failed = Some((a.path.clone(), e));
                break;
            }
        };
        let step = match (&a.action, &a.then) {
            (ActionKind::Remove, _) => match tree.remove(&path) {
                Ok(()) => Ok(Done::Removed),
                Err(e) if e.raw_os_error() == Some(libc::ENOTEMPTY) => {
                    tracing::warn!(%path, "kept: the directory holds files that are not versioned");
                    Ok(Done::Kept)
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Done::Gone),
                Err(e) => Err(e),
            },
            (_, Some(v)) => match v.kind {
                NodeKind::Dir => tree.mkdir(&path, v.meta.mode).map(|()| Done::Put),
                NodeKind::Symlink => tree.put_symlink(&path, &v.target).map(|()| Done::Put),
                NodeKind::File if a.link_to.is_some() => {
                    RelPath::new(a.link_to.as_deref().unwrap_or_default())
                        .map_err(|e| {
                            std::io::Error::new(std::io::ErrorKind::InvalidInput, e.to_string())
                        })
                        .and_then(|first| tree.link_in_place(&first, &path))
                        .map(|()| Done::Linked)
                }
                NodeKind::File => {
                    let reader = store.reader(v.content.clone());
                    tree.put_file(&path, &reader, &v.meta, &v.xattrs).map(|()| {
                        if let Some(shm) = path.with_suffix("-shm") {
                            tree.remove(&shm).ok();
                        }
                        Done::Put
                    })
                }
            },
            (_, None) => continue,
        };
        match step {
            Ok(d) => out.done.push((i, d)),
            Err(e) => {
                out.failed = Some((a.path.clone(), e));
                break;
            }
        }
    }
    out
}

/// The last step: records what [`put_back`] did as one moment. If a step failed, what was
/// done before it is recorded all the same, and the error says so.
pub fn record_rollback(
    rec: &mut Recorder,
    plan: &Plan,
    safety: String,
    put: PutBack,
) -> Result<Applied> {
    let mut kept = Vec::new();
    let mut applied = 0;
    for &(i, done) in &put.done {
        let a = &plan.actions[i];
        let path = RelPath::new(&a.path)?;
        match (done, &a.then) {
            (Done::Kept, _) => kept.push(a.path.clone()),
            (Done::Removed, _) => {
                rec.remove_any(&path)?;
                applied += 1;
            }
            (Done::Gone, _) => {
                rec.remove_any(&path).ok();
            }
            (Done::Put, Some(v)) => {
                match v.kind {
                    NodeKind::Dir => match rec.resolve_now(&path)? {
                        Some((_, NodeKind::Dir)) => rec.set_meta(
                            &path,
                            MetaUpdate {
                                mode: Some(v.meta.mode),
                                ..Default::default()
                            },
                        )?,
                        _ => {
                            rec.create(&path, NodeKind::Dir, v.meta, "")?;
                        }
                    },
                    NodeKind::Symlink | NodeKind::File => rec.restore(&path, v, plan.target)?,
                }
                applied += 1;
            }
            (Done::Linked, _) => {
                let first = RelPath::new(a.link_to.as_deref().unwrap_or_default())?;
                if rec.resolve_now(&path)?.is_some() {
                    rec.remove_any(&path)?;
                }
                rec.link(&first, &path)?;
                applied += 1;
            }
            (Done::Put, None) => {}
        }
    }
    let c = rec.commit(true)?;
    let seq = c.map(|c| c.seq).unwrap_or(rec.store().head());
    if let Some((path, source)) = put.failed {
        let what = match applied {
            0 => format!("restoring {path} (nothing was rolled back)"),
            n => format!(
                "restoring {path} (the {n} path(s) before it were rolled back, recorded as #{seq}; undo with `clawfs rollback --to {safety}`)"
            ),
        };
        return Err(StoreError::Io { what, source });
    }
    Ok(Applied {
        safety_mark: safety,
        seq,
        applied,
        kept,
    })
}

fn unique_mark_name(store: &Store, base: &str) -> Result<String> {
    if store.mark(base)?.is_none() {
        return Ok(base.to_string());
    }
    for i in 2.. {
        let n = format!("{base}-{i}");
        if store.mark(&n)?.is_none() {
            return Ok(n);
        }
    }
    unreachable!()
}
