//! Rollback of a 10,000-file tree where 100 files changed touches only those 100: the plan has
//! exactly 100 steps, and every other real file keeps its inode and mtime (it is not rewritten).

use std::collections::HashMap;
use std::os::unix::fs::MetadataExt;
use std::sync::Arc;

use clawfs::daemon::recorder_thread::Recording;
use clawfs::fs::filter::Filter;
use clawfs::ids::SessionId;
use clawfs::realfs::RealTree;
use clawfs::relpath::RelPath;
use clawfs::store::rollback::{apply_rollback, ActionKind};
use clawfs::store::Store;

#[test]
fn rollback_of_ten_thousand_files_touches_only_the_hundred_changed() {
    let store_dir = tempfile::tempdir().unwrap();
    let tree = tempfile::tempdir().unwrap();
    let name = |i: usize| format!("d{:02}/f{i:05}.md", i % 100);
    for i in 0..10_000 {
        let p = tree.path().join(name(i));
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, format!("file {i}\n")).unwrap();
    }
    let store = Store::open_or_create(store_dir.path()).unwrap();
    let root = Arc::new(clawfs::sys::open_dir(tree.path()).unwrap());
    let mut r = Recording::new(
        store.recorder(SessionId(1)).unwrap(),
        root,
        Filter::new(&[]).unwrap(),
    );
    r.import_real(&RelPath::root());
    r.commit(true);
    let base = store.head();
    let changed: Vec<usize> = (0..10_000).step_by(100).collect();
    for &i in &changed {
        std::fs::write(tree.path().join(name(i)), b"changed\n").unwrap();
        r.import_real(&RelPath::new(&name(i)).unwrap());
    }
    r.commit(true);
    let before: HashMap<usize, (u64, i64)> = (0..10_000)
        .map(|i| {
            let m = std::fs::metadata(tree.path().join(name(i))).unwrap();
            (i, (m.ino(), m.mtime_nsec()))
        })
        .collect();
    let plan = store.plan_rollback(base, &[], false).unwrap();
    assert_eq!(plan.actions.len(), 100);
    assert!(plan.actions.iter().all(|a| a.action == ActionKind::Restore));
    let applied = apply_rollback(&mut r.rec, &plan, &RealTree::new(tree.path())).unwrap();
    assert_eq!(applied.applied, 100);
    for i in 0..10_000 {
        let p = tree.path().join(name(i));
        assert_eq!(std::fs::read_to_string(&p).unwrap(), format!("file {i}\n"));
        let m = std::fs::metadata(&p).unwrap();
        let untouched = (m.ino(), m.mtime_nsec()) == before[&i];
        assert_eq!(untouched, !changed.contains(&i), "file {i}");
    }
}
