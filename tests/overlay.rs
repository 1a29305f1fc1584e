//! The overlay with real programs writing through a real mount.

mod common;

use std::os::unix::fs::MetadataExt;
use std::os::unix::process::CommandExt;

use common::{sh_in, Sandbox};

#[test]
fn sqlite_wal_through_the_mount_passes_integrity_check_and_is_versioned() {
    let s = Sandbox::new();
    s.mount();
    let out = s.sh(
        r#"python3 - <<'PY'
import sqlite3
con = sqlite3.connect("state/openclaw.sqlite") if False else None
import os
os.makedirs("state", exist_ok=True)
con = sqlite3.connect("state/openclaw.sqlite")
con.execute("PRAGMA journal_mode=WAL"); con.execute("PRAGMA synchronous=NORMAL")
con.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)")
for i in range(2000):
    con.execute("INSERT INTO t(v) VALUES (?)", ("row %d" % i,)); con.commit()
    if i % 500 == 499:
        con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
print(con.execute("PRAGMA integrity_check").fetchone()[0], con.execute("select count(*) from t").fetchone()[0])
con.close()
PY"#,
    );
    assert_eq!(out.trim(), "ok 2000");
    assert_eq!(
        s.sh("sqlite3 state/openclaw.sqlite 'PRAGMA integrity_check; select count(*) from t;'")
            .trim(),
        "ok\n2000"
    );
    let hist = s.json(&["history", "state/openclaw.sqlite"]);
    assert!(hist.len() > 3, "{hist:?}");
    s.unmount();
    // Unmounted, the directory holds the plain database.
    assert_eq!(
        sh_in(
            &s.dir,
            "sqlite3 state/openclaw.sqlite 'select count(*) from t;'"
        )
        .trim(),
        "2000"
    );
}

#[test]
fn git_cp_mv_tar_work_and_inodes_survive_rename() {
    let s = Sandbox::new();
    s.mount();
    s.sh(
        "git init -q repo && cd repo && echo hi > a && git add a && \
         git -c user.email=t@t -c user.name=t commit -qm one && git log --oneline | grep -q one",
    );
    s.sh("mkdir -p src/sub && echo x > src/sub/f && ln -s f src/sub/l && cp -a src dst && mv dst moved && test -L moved/sub/l && test \"$(cat moved/sub/f)\" = x");
    s.sh("tar cf /tmp/clawfs-test-$$.tar -C moved . && mkdir untar && tar xf /tmp/clawfs-test-$$.tar -C untar && rm /tmp/clawfs-test-$$.tar && cmp untar/sub/f moved/sub/f");
    // (st_dev, st_ino) of the temp file's descriptor equals lstat(dest) after rename; nlink true.
    let tmp = s.path("openclaw.json.tmp");
    std::fs::write(&tmp, b"{}").unwrap();
    let f = std::fs::File::open(&tmp).unwrap();
    let before = f.metadata().unwrap();
    std::fs::rename(&tmp, s.path("openclaw.json")).unwrap();
    let after = std::fs::symlink_metadata(s.path("openclaw.json")).unwrap();
    assert_eq!((before.dev(), before.ino()), (after.dev(), after.ino()));
    assert_eq!(after.nlink(), 1);
    std::fs::hard_link(s.path("openclaw.json"), s.path("hard")).unwrap();
    assert_eq!(
        std::fs::symlink_metadata(s.path("openclaw.json"))
            .unwrap()
            .nlink(),
        2
    );
    s.settle();
    let tree: Vec<String> = s
        .json(&["diff", "--from", "1"])
        .iter()
        .map(|e| e["path"].as_str().unwrap().to_string())
        .collect();
    for p in [
        "repo/.git/HEAD",
        "moved/sub/f",
        "moved/sub/l",
        "untar/sub/f",
        "openclaw.json",
        "hard",
    ] {
        assert!(tree.contains(&p.to_string()), "{p} not versioned: {tree:?}");
    }
}

#[test]
fn unversioned_paths_pass_through_and_are_captured_when_renamed_in() {
    let s = Sandbox::new();
    s.mount();
    s.write("cache/big.bin", &vec![7u8; 100_000]);
    s.write("state/db.sqlite-shm", b"shm");
    s.write("tmp/x", b"t");
    s.write("cache/staged.md", b"staged");
    std::fs::rename(s.path("cache/staged.md"), s.path("workspace.md")).unwrap();
    s.settle();
    let paths: Vec<String> = s
        .json(&["diff", "--from", "1"])
        .iter()
        .map(|e| e["path"].as_str().unwrap().to_string())
        .collect();
    assert!(
        !paths
            .iter()
            .any(|p| p.starts_with("cache") || p.ends_with("-shm") || p.starts_with("tmp")),
        "{paths:?}"
    );
    assert!(paths.contains(&"workspace.md".to_string()), "{paths:?}");
    assert_eq!(s.ok(&["cat", "workspace.md"]), "staged");
    assert_eq!(s.read("cache/big.bin").len(), 100_000);
}

/// As root, files that are not versioned are served by the kernel on the real file (FUSE
/// passthrough): SQLite's `-shm` mapping, caches, `tmp/`. The kernel holds an inode in one mode
/// at a time and answers an open in the other with ETXTBSY, which a plain directory never does:
/// opens across a rename between a versioned and an unversioned name must all succeed, and what
/// is written under a versioned name is versioned by its fsync and close.
/// A change the recorder captures whole from the real tree (a punched or zeroed range, a
/// directory renamed in from a path that is not versioned) is captured as it was when made:
/// the recorder comes to it after the writer has gone on, and a rename of its directory made
/// meanwhile took the file out of the history (every case below failed so).
#[test]
fn a_capture_is_not_lost_to_a_rename_the_writer_made_right_after() {
    let s = Sandbox::new();
    s.mount();
    s.sh(r#"python3 - <<'PY'
import os, ctypes
libc = ctypes.CDLL(None, use_errno=True)
libc.fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_long, ctypes.c_long]
for i in range(20):
    os.makedirs("r%d/d/e" % i)
    with open("r%d/d/e/b.tmp" % i, "wb") as f:
        f.write(os.urandom(70000)); f.flush(); os.fsync(f.fileno())
    os.rename("r%d/d/e/b.tmp" % i, "r%d/d/e/b" % i)
    os.rename("r%d/d/e" % i, "r%d/g" % i)
    fd = os.open("r%d/g/b" % i, os.O_RDWR)
    # FALLOC_FL_ZERO_RANGE, or FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE
    assert libc.fallocate(fd, 0x10 if i % 2 else 0x03, 100, 10000) == 0
    os.close(fd)
    os.rename("r%d/g" % i, "r%d/d/e" % i)
    os.makedirs("r%d/q.lock" % i)
    with open("r%d/q.lock/f" % i, "wb") as f: f.write(b"in %d" % i)
    os.makedirs("s%d" % i)
    os.rename("r%d/q.lock" % i, "s%d/in" % i)
    os.rename("s%d" % i, "t%d" % i)
PY"#);
    s.ok(&["mark", "after"]);
    for i in 0..20 {
        let zeroed = format!("r{i}/d/e/b");
        let stored = s.raw(&["cat", &zeroed, "--at", "after"]);
        assert!(
            stored.status.success() && stored.stdout == s.read(&zeroed),
            "{zeroed} as recorded is not the file: {}",
            String::from_utf8_lossy(&stored.stderr)
        );
        let moved_in = format!("t{i}/in/f");
        assert_eq!(
            s.ok(&["cat", &moved_in, "--at", "after"]),
            format!("in {i}")
        );
    }
    s.unmount();
}

/// Runs the python `body` in the tree, with `exchange(a, b)` (`RENAME_EXCHANGE`) defined.
fn with_exchange(s: &Sandbox, body: &str) {
    s.sh(&format!(
        "python3 - <<'PY'
import os, ctypes
libc = ctypes.CDLL(None, use_errno=True)
libc.renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
def exchange(a, b):
    assert libc.renameat2(-100, a.encode(), -100, b.encode(), 2) == 0, ctypes.get_errno()
{body}
PY"
    ));
}

/// Marks the moment, restores it, and names the `files` the restored tree holds other than
/// the mount does; with where it restored them.
fn restored_wrong(s: &Sandbox, files: &[String]) -> (std::path::PathBuf, Vec<String>) {
    s.ok(&["mark", "after"]);
    let restored = s.home.path().join("restored");
    s.ok(&["restore", "--at", "after", restored.to_str().unwrap()]);
    let wrong = files
        .iter()
        .filter(|f| std::fs::read(restored.join(f)).ok() != Some(s.read(f)))
        .cloned()
        .collect();
    (restored, wrong)
}

/// What comes into the tree from names that are not versioned is recorded as it is: a file's
/// `user.` attributes with it, a file exchanged with one of the same size written in the same
/// clock tick, the files of a directory renamed in as they were named then (two of them
/// exchanged right after), and a file written and labelled through a second name that is not
/// versioned. Before, the attributes were dropped, the directory's two files were recorded
/// exchanged twice, and the linked file's changes were not recorded.
#[test]
fn files_arriving_from_names_that_are_not_versioned_are_recorded_as_they_are() {
    let s = Sandbox::new();
    s.mount();
    with_exchange(
        &s,
        r#"
for i in range(10):
    os.makedirs("x%d.lock" % i)
    with open("x%d.lock/f" % i, "w") as f: f.write("f")
    os.setxattr("x%d.lock/f" % i, "user.origin", b"downloaded %d" % i)
    os.rename("x%d.lock" % i, "skill%d" % i)
    with open("same%d" % i, "w") as f: f.write("A" * 3000)
    with open("same%d.lock" % i, "w") as f: f.write("B" * 3000)
    exchange("same%d" % i, "same%d.lock" % i)
    with open("linked%d" % i, "w") as f: f.write("old")
    os.link("linked%d" % i, "linked%d.lock" % i)
    with open("linked%d.lock" % i, "r+") as f: f.truncate(0); f.write("new text")
    os.setxattr("linked%d.lock" % i, "user.tag", b"t")
    os.makedirs("y%d.lock" % i)
    with open("y%d.lock/a" % i, "w") as f: f.write("a" * 10)
    with open("y%d.lock/b" % i, "w") as f: f.write("b" * 20)
    os.rename("y%d.lock" % i, "dir%d" % i)
    exchange("dir%d/a" % i, "dir%d/b" % i)
"#,
    );
    let files: Vec<String> = (0..10)
        .flat_map(|i| {
            [
                format!("skill{i}/f"),
                format!("same{i}"),
                format!("linked{i}"),
                format!("dir{i}/a"),
                format!("dir{i}/b"),
            ]
        })
        .collect();
    let (restored, mut wrong) = restored_wrong(&s, &files);
    for i in 0..10 {
        for (f, attr, value) in [
            (
                format!("skill{i}/f"),
                "user.origin",
                format!("downloaded {i}"),
            ),
            (format!("linked{i}"), "user.tag", "t".to_string()),
        ] {
            let got = common::sh_in(
                &restored,
                &format!("python3 -c 'import os; print(os.getxattr(\"{f}\", \"{attr}\").decode())' || true"),
            );
            if got.trim() != value {
                wrong.push(format!("{f} {attr}"));
            }
        }
    }
    assert!(wrong.is_empty(), "recorded wrong: {wrong:?}");
    s.unmount();
}

/// A file with several names shares one history under its versioned names, however it came
/// by them: changed through a name that is not versioned (opened by it, even), linked in a
/// directory renamed in, or linked to a file outside it; and a file arriving over a name whose
/// file had other names leaves those alone. Each case recorded a name wrong before (found by
/// `random_ops`).
#[test]
fn a_file_with_several_names_keeps_one_history_under_its_versioned_names() {
    let s = Sandbox::new();
    s.mount();
    with_exchange(
        &s,
        r#"
def put(p, data, at=0):
    fd = os.open(p, os.O_RDWR | os.O_CREAT, 0o644)
    os.pwrite(fd, data, at)
    os.close(fd)
os.makedirs("d"); os.makedirs("q.lock")
# Opened and written by its name that is not versioned.
put("d/a", b"a" * 5000)
os.link("d/a", "q.lock/a")
put("q.lock/a", b"through the other name", 100)
# Linked to a file outside a directory renamed in, then written by either name.
put("d/b", b"b" * 3000)
os.makedirs("in1.lock")
os.link("d/b", "in1.lock/b")
os.rename("in1.lock", "d/in1")
put("d/in1/b", b"written inside", 10)
# Two names of one file inside a directory renamed in.
os.makedirs("in2.lock")
put("in2.lock/x", b"x" * 100)
os.link("in2.lock/x", "in2.lock/y")
os.rename("in2.lock", "d/in2")
put("d/in2/y", b"written as y", 0)
# A file arriving over a name whose file is linked elsewhere: that other name keeps its file.
put("c", b"c" * 10)
os.link("c", "d/c")
put("z.lock", b"z" * 50)
exchange("c", "z.lock")
"#,
    );
    let files = ["d/a", "d/b", "d/in1/b", "d/in2/x", "d/in2/y", "c", "d/c"].map(String::from);
    let (_, wrong) = restored_wrong(&s, &files);
    assert!(wrong.is_empty(), "recorded wrong: {wrong:?}");
    // Still one file under its two names in the history: a rollback of one restores both.
    let newest = |f: &str| s.json(&["history", f])[0]["version"].clone();
    assert!(newest("d/in2/x").is_string());
    assert_eq!(newest("d/in2/x"), newest("d/in2/y"));
    s.unmount();
}

/// A file with several names, found so by the mount's scan, keeps one history under them even
/// where the kernel has not looked up the others since the mount: written through a descriptor
/// whose name was removed, and arriving under a versioned name from one that is not. Before,
/// the write was lost to the history of the other name, and the arrival recorded a file of its
/// own (found by `random_ops --crash`).
#[test]
fn names_the_kernel_has_not_looked_up_since_the_mount_keep_sharing_one_history() {
    let s = Sandbox::new();
    s.write("a", &[b'a'; 20_000]);
    s.write("d/b", &[b'b'; 3000]);
    s.write("z.lock", &[b'z'; 100]);
    std::fs::hard_link(s.path("a"), s.path("x.json")).unwrap();
    std::fs::hard_link(s.path("d/b"), s.path("d/c")).unwrap();
    std::fs::hard_link(s.path("z.lock"), s.path("d/e")).unwrap();
    s.write("y", &[b'y'; 5000]);
    s.write("q.lock/keep", b"");
    std::fs::hard_link(s.path("y"), s.path("q.lock/y")).unwrap();
    s.mount();
    // Only x.json, d/c and the unversioned names are looked up from here on.
    s.sh(r#"python3 - <<'PY'
import os
fd = os.open("x.json", os.O_RDWR)
os.unlink("x.json")
os.pwrite(fd, b"written after its name was removed", 0)
os.close(fd)
# d/b's file arrives under a second versioned name from one that is not.
os.link("d/c", "d/q.lock")
os.unlink("d/c")
os.rename("d/q.lock", "d/f")
# And z.lock's, linked as d/e before the mount, arrives as g.
os.rename("z.lock", "g")
# y's file arrives inside a directory renamed in.
os.rename("q.lock", "in")
PY"#);
    // Once the arrival is recorded (its capture reads the bytes late), y is removed while
    // open, and written.
    s.ok(&["mark", "arrived"]);
    s.sh(r#"python3 - <<'PY'
import os
fd = os.open("y", os.O_RDWR)
os.unlink("y")
os.pwrite(fd, b"written after y was removed", 0)
os.close(fd)
PY"#);
    let files = ["a", "d/b", "d/f", "d/e", "g", "in/y"].map(String::from);
    let (_, wrong) = restored_wrong(&s, &files);
    assert!(wrong.is_empty(), "recorded wrong: {wrong:?}");
    let newest = |f: &str| s.json(&["history", f])[0]["version"].clone();
    assert!(newest("d/b").is_string());
    assert_eq!(
        newest("d/b"),
        newest("d/f"),
        "d/f arrived as a second name of d/b's file"
    );
    assert_eq!(
        newest("d/e"),
        newest("g"),
        "g arrived as a second name of d/e's file"
    );
    // A write through one name is the others' too, in the history.
    std::fs::write(s.path("d/f"), "through d/f\n").unwrap();
    std::fs::write(s.path("g"), "through g\n").unwrap();
    s.ok(&["unmark", "after"]);
    std::fs::remove_dir_all(s.home.path().join("restored")).unwrap();
    let (_, wrong) = restored_wrong(&s, &files);
    assert!(wrong.is_empty(), "recorded wrong: {wrong:?}");
    assert_eq!(s.ok(&["cat", "d/b", "--at", "after"]), "through d/f\n");
    s.unmount();
}

/// Two writers open files by name and write each at a place of its own while a third
/// exchanges two of those names and renames the directory holding another, back and forth:
/// every write is recorded under the name of the file it went to. Before, an open resolved
/// the inode's path, then a rename in another directory (which the kernel does not lock
/// against it) moved another file under that path, and the open got that file: its writes
/// landed there but were recorded under the first file's name (found by `random_ops
/// --threads`).
#[test]
fn opens_racing_renames_elsewhere_record_each_write_under_its_file() {
    let s = Sandbox::new();
    s.mount();
    with_exchange(
        &s,
        r#"
import threading
os.makedirs("d")
for n in ("a", "b", "d/c"):
    with open(n, "wb") as f: f.write(n.encode() * 100)
stop = False
def exchanger():
    while not stop:
        exchange("a", "b")
        os.rename("d", "e"); os.rename("e", "d")
def writer(k):
    for i in range(1500):
        for n in ("a", "d/c"):
            try:
                fd = os.open(n, os.O_WRONLY)
            except OSError:
                continue
            try: os.pwrite(fd, b"w%d-%05d" % (k, i), (i * 2 + k) * 16)
            finally: os.close(fd)
t = threading.Thread(target=exchanger); t.start()
ws = [threading.Thread(target=writer, args=(k,)) for k in range(2)]
for w in ws: w.start()
for w in ws: w.join()
stop = True; t.join()
"#,
    );
    let files = ["a", "b", "d/c"].map(String::from);
    let (_, wrong) = restored_wrong(&s, &files);
    assert!(wrong.is_empty(), "recorded wrong: {wrong:?}");
    s.unmount();
}

/// A file written passed through (opened under `tmp/`, renamed in while open, written on)
/// is captured by a mark and by a rollback's plan, which must see the tree as it is; its
/// writes go past the daemon, and before, the history had them only at that descriptor's
/// close (found by `random_ops --threads` on seeds with names that are not versioned).
#[test]
fn a_mark_captures_a_file_written_passed_through_under_a_versioned_name() {
    use std::io::Write;
    if !common::root_or_skip("passthrough") {
        return;
    }
    let s = Sandbox::new();
    s.write("tmp/.keep", b"");
    s.write("notes/.keep", b"");
    s.mount();
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(s.path("tmp/draft"))
        .unwrap();
    assert_eq!(s.passed_through(), Some(1), "passthrough is not on");
    f.write_all(b"first part\n").unwrap();
    std::fs::rename(s.path("tmp/draft"), s.path("notes/draft.md")).unwrap();
    f.write_all(b"written after the rename\n").unwrap();
    s.ok(&["mark", "drafted"]);
    assert_eq!(
        s.ok(&["cat", "notes/draft.md", "--at", "drafted"]),
        "first part\nwritten after the rename\n"
    );
    // A rollback to the mark has nothing to put back: the file is as it was then.
    let said = s.ok(&["rollback", "--to", "drafted", "--yes", "--force"]);
    assert!(said.contains("nothing to do"), "{said}");
    f.write_all(b"and more\n").unwrap();
    let said = s.ok(&["rollback", "--to", "drafted", "--yes", "--force"]);
    assert!(said.contains("rolled back 1 path"), "{said}");
    drop(f);
    assert_eq!(
        std::fs::read_to_string(s.path("notes/draft.md")).unwrap(),
        "first part\nwritten after the rename\n"
    );
    s.unmount();
}

#[test]
fn unversioned_files_are_passed_through_and_opens_across_renames_never_fail() {
    use std::io::{BufRead, Write};
    if !common::root_or_skip("passthrough") {
        return;
    }
    let s = Sandbox::new();
    s.write("notes/b.md", b"b\n");
    s.write("tmp/.keep", b"");
    s.mount();
    assert_eq!(s.passed_through(), Some(0), "passthrough is not on");

    // Open under tmp/: passed through. Renamed in while open, and opened again under the
    // versioned name to append: that open must join the first one's mode, not fail.
    let rw = |rel: &str| {
        std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(s.path(rel))
            .unwrap()
    };
    let mut a = rw("tmp/a");
    a.write_all(b"from tmp\n").unwrap();
    assert_eq!(s.passed_through(), Some(1));
    std::fs::rename(s.path("tmp/a"), s.path("notes/a.md")).unwrap();
    let mut b = std::fs::OpenOptions::new()
        .append(true)
        .open(s.path("notes/a.md"))
        .expect("an open of a file already open passed through");
    b.write_all(b"appended\n").unwrap();
    assert_eq!(s.passed_through(), Some(1));
    // Its writes never reach the daemon: an fsync captures the file whole.
    b.sync_all().unwrap();
    assert_eq!(s.ok(&["cat", "notes/a.md"]), "from tmp\nappended\n");
    drop((a, b));
    common::eventually("the passed-through opens to be released", || {
        s.passed_through() == Some(0)
    });
    s.settle();
    assert_eq!(s.ok(&["cat", "notes/a.md"]), "from tmp\nappended\n");

    // The other way round: a versioned file held open through the cache, renamed out to tmp/
    // and opened there to write, stays in the cache.
    let held = std::fs::File::open(s.path("notes/b.md")).unwrap();
    std::fs::rename(s.path("notes/b.md"), s.path("tmp/b")).unwrap();
    rw("tmp/b")
        .write_all(b"B")
        .expect("writing through a second open");
    assert_eq!(s.passed_through(), Some(0));
    drop(held);
    assert_eq!(s.read("tmp/b"), b"B\n");

    // Pages read while a file is cached must not be served after it was written passed through
    // (the passed-through open drops them: it cannot keep the cache): read under a versioned
    // name, rewritten in place under tmp/, read again under its name.
    let page = |c: u8| vec![c; 8192];
    s.write("notes/c.md", &page(b'a'));
    assert_eq!(s.read("notes/c.md"), page(b'a'));
    std::fs::rename(s.path("notes/c.md"), s.path("tmp/c")).unwrap();
    std::os::unix::fs::FileExt::write_all_at(&rw("tmp/c"), &page(b'b'), 0).unwrap();
    std::fs::rename(s.path("tmp/c"), s.path("notes/c.md")).unwrap();
    assert!(s.read("notes/c.md") == page(b'b'), "stale pages served");

    // SQLite in WAL mode: its -shm is mapped from the real file while the database is open.
    let mut py = std::process::Command::new("python3")
        .arg("-c")
        .arg(
            r#"
import sqlite3, sys
con = sqlite3.connect("state.sqlite")
con.execute("PRAGMA journal_mode=WAL"); con.execute("PRAGMA synchronous=NORMAL")
con.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)")
for i in range(500):
    con.execute("INSERT INTO t(v) VALUES (?)", ("row %d" % i,)); con.commit()
print("open", flush=True)
sys.stdin.readline()
for i in range(500):
    con.execute("INSERT INTO t(v) VALUES (?)", ("row %d" % i,)); con.commit()
print(con.execute("PRAGMA integrity_check").fetchone()[0], con.execute("select count(*) from t").fetchone()[0])
"#,
        )
        .current_dir(&s.dir)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = std::io::BufReader::new(py.stdout.take().unwrap());
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    assert_eq!(line, "open\n");
    assert_eq!(
        s.passed_through(),
        Some(1),
        "state.sqlite-shm is not passed through"
    );
    py.stdin.take().unwrap().write_all(b"go\n").unwrap();
    line.clear();
    out.read_line(&mut line).unwrap();
    assert_eq!(line, "ok 1000\n");
    assert!(py.wait().unwrap().success());
    s.settle();
    assert!(!s.json(&["history", "state.sqlite"]).is_empty());
    s.unmount();
    assert_eq!(
        sh_in(&s.dir, "sqlite3 state.sqlite 'select count(*) from t;'").trim(),
        "1000"
    );
    assert_eq!(s.read("notes/a.md"), b"from tmp\nappended\n");
}

/// A state directory on overlayfs, as in a container: unversioned files are still passed through
/// (the mount must declare a stack depth above overlayfs's, or the kernel refuses every real
/// file as a backing file).
#[test]
fn on_overlayfs_unversioned_files_are_still_passed_through() {
    use std::io::Write;
    if !common::root_or_skip("overlayfs with passthrough") {
        return;
    }
    let s = Sandbox::new();
    let layers = s.home.path().join("layers");
    for d in ["lower/tmp", "upper", "work"] {
        std::fs::create_dir_all(layers.join(d)).unwrap();
    }
    std::fs::write(layers.join("lower/AGENTS.md"), b"from the image\n").unwrap();
    let opts = format!(
        "lowerdir={0}/lower,upperdir={0}/upper,workdir={0}/work",
        layers.display()
    );
    let st = std::process::Command::new("mount")
        .args(["-t", "overlay", "overlay", "-o", &opts])
        .arg(&s.dir)
        .status()
        .unwrap();
    assert!(st.success(), "mounting overlayfs");
    // Dropped first: the clawfs mount on top, then the overlay under it.
    struct Layers<'a>(&'a Sandbox);
    impl Drop for Layers<'_> {
        fn drop(&mut self) {
            if self.0.is_mounted() {
                let _ = self
                    .0
                    .cmd()
                    .args(["unmount", self.0.dir.to_str().unwrap()])
                    .output();
            }
            let _ = std::process::Command::new("umount")
                .arg("-l")
                .arg(&self.0.dir)
                .status();
        }
    }
    let _layers = Layers(&s);
    s.mount();
    assert_eq!(s.passed_through(), Some(0), "passthrough is not on");
    let mut f = std::fs::File::create(s.path("tmp/scratch")).unwrap();
    f.write_all(b"scratch").unwrap();
    assert_eq!(
        s.passed_through(),
        Some(1),
        "a file on overlayfs is not passed through"
    );
    drop(f);
    s.write("AGENTS.md", b"edited\n");
    s.settle();
    assert_eq!(s.ok(&["cat", "AGENTS.md"]), "edited\n");
    s.unmount();
    assert_eq!(
        std::fs::read(layers.join("upper/tmp/scratch")).unwrap(),
        b"scratch"
    );
}

/// Python asks `TCGETS` of every file it opens (`isatty`). The answer must be the one a plain
/// file gives (ENOTTY), and the daemon must not log a warning for each: it once did, one line
/// per open, into a log nothing rotates.
#[test]
fn ioctls_on_files_answer_enotty_without_filling_the_log() {
    let s = Sandbox::new();
    s.mount();
    let out = s.sh(r#"python3 - <<'PY'
import errno, fcntl, termios
for i in range(40):
    with open("note%d.md" % i, "w") as f:
        f.write("x")
        assert not f.isatty()
        try:
            fcntl.ioctl(f.fileno(), termios.TCGETS, bytes(64))
            raise SystemExit("TCGETS succeeded on a regular file")
        except OSError as e:
            assert e.errno == errno.ENOTTY, e
print("ok")
PY"#);
    assert_eq!(out.trim(), "ok");
    s.unmount();
    let log = std::fs::read_to_string(s.store.join("daemon.log")).unwrap_or_default();
    assert!(!log.contains("ioctl"), "{log}");
    assert_eq!(s.ok(&["cat", "note39.md"]), "x");
}

/// Write-only opens and SQLite's logs send each write(2) to the daemon as issued, past the page
/// cache (`direct_writes`). Other opens of the same file must still see every byte at once: a
/// shared mapping and a cached reader, including a mapping's unsaved page that a direct write
/// then overwrites in part (the kernel must save the page first, or the direct write is lost
/// when the page is saved later); a log mapped shared; and SQLite reading its logs back, for a
/// rollback spilled to the database file and for a second connection and a checkpoint. The
/// history holds what the real file holds.
#[test]
fn direct_writes_stay_coherent_with_mappings_cached_readers_and_sqlite_reading_its_logs() {
    let s = Sandbox::new();
    s.mount();
    let out = s.sh(r#"python3 - <<'PY'
import mmap, os, sqlite3
with open("m.bin", "wb") as f:          # write-only: direct
    f.write(b"a" * 8192)
fd = os.open("m.bin", os.O_RDWR)          # through the page cache
m = mmap.mmap(fd, 8192)
assert m[:4] == b"aaaa" and os.pread(fd, 4, 4096) == b"aaaa"
w = os.open("m.bin", os.O_WRONLY)
os.pwrite(w, b"BBBB", 100)
assert m[100:104] == b"BBBB", m[100:104]
assert os.pread(fd, 4, 100) == b"BBBB"
m[5000:5004] = b"CCCC"                    # an unsaved page in the mapping...
os.pwrite(w, b"DDDD", 5002)               # ...that a direct write overlaps
assert m[5000:5006] == b"CCDDDD", m[5000:5006]
assert os.pread(fd, 6, 5000) == b"CCDDDD"
os.close(w); m.flush(); m.close(); os.close(fd)

# A log opened read-write (direct) and mapped shared.
fd = os.open("mapped.db-wal", os.O_RDWR | os.O_CREAT, 0o644)
os.pwrite(fd, b"x" * 8192, 0)
m = mmap.mmap(fd, 8192)
m[10:14] = b"EEEE"
assert os.pread(fd, 4, 10) == b"EEEE"
os.pwrite(fd, b"FFFF", 12)
assert m[10:16] == b"EEFFFF", m[10:16]
m.close(); os.close(fd)

# Rollback journal: a transaction larger than the cache spills into the database file, and
# ROLLBACK reads the journal back to undo it.
c = sqlite3.connect("rollback.sqlite", isolation_level=None)
c.execute("PRAGMA journal_mode=DELETE"); c.execute("PRAGMA cache_size=2")
c.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)")
for i in range(200):
    c.execute("INSERT INTO t(v) VALUES (?)", ("kept %d" % i,))
c.execute("BEGIN")
for i in range(2000):
    c.execute("INSERT INTO t(v) VALUES (?)", ("undone %d " % i * 20,))
c.execute("ROLLBACK")
assert c.execute("SELECT count(*) FROM t").fetchone()[0] == 200
assert c.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
c.close()

# WAL: a second connection reads the frames the first wrote; a checkpoint copies them.
a = sqlite3.connect("wal.sqlite", isolation_level=None)
a.execute("PRAGMA journal_mode=WAL"); a.execute("PRAGMA wal_autocheckpoint=0")
a.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)")
for i in range(500):
    a.execute("INSERT INTO t(v) VALUES (?)", ("row %d " % i * 10,))
b = sqlite3.connect("wal.sqlite")
assert b.execute("SELECT count(*), sum(length(v)) FROM t").fetchone()[0] == 500
assert a.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()[0] == 0
assert b.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
b.close(); a.close()
print("ok")
PY"#);
    assert_eq!(out.trim(), "ok");
    s.settle();
    let real = s.read("m.bin");
    assert_eq!(&real[100..104], b"BBBB");
    assert_eq!(&real[5000..5006], b"CCDDDD");
    s.assert_newest_is_the_file("m.bin");
    s.assert_newest_is_the_file("mapped.db-wal");
    assert_eq!(
        s.sh("sqlite3 rollback.sqlite 'select count(*) from t' && sqlite3 wal.sqlite 'select count(*) from t'"),
        "200\n500\n"
    );
    s.unmount();
    assert_eq!(std::fs::read(s.dir.join("m.bin")).unwrap(), real);
}

/// Programs that bypass the page cache (`O_DIRECT`: `dd oflag=direct`, databases, `fio
/// --direct=1`) read and write through the mount as on the plain directory, versioned or not.
/// The daemon once opened the real file with the caller's `O_DIRECT` and failed every such read
/// and write with EINVAL: its buffers are not aligned as `O_DIRECT` needs.
#[test]
fn o_direct_reads_and_writes_work_and_are_versioned() {
    let s = Sandbox::new();
    s.mount();
    s.sh(
        "mkdir -p tmp && head -c 8388608 /dev/urandom > /tmp/clawfs-test-$$.bin && \
         for f in direct.bin tmp/direct.bin; do \
           dd if=/tmp/clawfs-test-$$.bin of=$f bs=1M oflag=direct status=none && \
           dd if=$f of=$f.back bs=1M iflag=direct status=none && cmp $f.back /tmp/clawfs-test-$$.bin && \
           cmp $f /tmp/clawfs-test-$$.bin || exit 1; \
         done; rm /tmp/clawfs-test-$$.bin",
    );
    let out = s.sh(r#"python3 - <<'PY'
import mmap, os
buf = mmap.mmap(-1, 1 << 16)              # page-aligned, as O_DIRECT wants
buf.write(b"d" * (1 << 16))
fd = os.open("rw.bin", os.O_RDWR | os.O_CREAT | os.O_DIRECT, 0o644)
assert os.pwrite(fd, buf, 4096) == 1 << 16
back = mmap.mmap(-1, 1 << 16)
assert os.preadv(fd, [back], 4096) == 1 << 16 and back[:] == buf[:]
os.close(fd)
print("ok")
PY"#);
    assert_eq!(out.trim(), "ok");
    s.settle();
    s.assert_newest_is_the_file("direct.bin");
    s.assert_newest_is_the_file("rw.bin");
    s.unmount();
    let rw = std::fs::read(s.dir.join("rw.bin")).unwrap();
    assert_eq!(rw.len(), 4096 + (1 << 16));
    assert!(rw[..4096].iter().all(|&b| b == 0) && rw[4096..].iter().all(|&b| b == b'd'));
}

/// fio writes and reads back, with checksums, through every way a program does I/O: plain and
/// vectored calls, Linux AIO, io_uring, a shared mapping, each through the page cache and with
/// O_DIRECT. Every byte verifies, and the history's newest version of each file is the file.
#[test]
fn fio_verifies_through_every_io_engine_and_the_history_matches() {
    let s = Sandbox::new();
    s.mount();
    let mut files = Vec::new();
    for engine in ["psync", "pvsync2", "libaio", "io_uring", "mmap"] {
        for direct in [0, 1] {
            let f = format!("fio-{engine}-{direct}.bin");
            s.sh(&format!(
                "fio --name=t --filename={f} --size=8M --bs=4k --rw=randrw --ioengine={engine} \
                 --direct={direct} --iodepth=8 --verify=crc32c --do_verify=1 --verify_fatal=1 \
                 --output=/dev/null"
            ));
            files.push(f);
        }
    }
    s.settle();
    for f in files {
        s.assert_newest_is_the_file(&f);
    }
}

/// The kernel asks a FUSE filesystem for no O_TMPFILE operation (there is none in the protocol
/// fuser speaks), so the open fails with EOPNOTSUPP before reaching the daemon. What matters is
/// that the refusal is that clean error, which programs and libcs fall back from, and that the
/// fallback (a named temp file, unlinked while open) works and leaves nothing behind.
#[test]
fn o_tmpfile_is_refused_cleanly_and_temporary_files_fall_back() {
    let s = Sandbox::new();
    s.mount();
    s.write("SOUL.md", b"soul");
    let out = s.sh(r#"python3 - <<'PY'
import errno, os, tempfile
try:
    os.open(".", os.O_TMPFILE | os.O_WRONLY, 0o600)
    print("opened")
except OSError as e:
    print("EOPNOTSUPP" if e.errno == errno.EOPNOTSUPP else errno.errorcode[e.errno])
with tempfile.TemporaryFile(dir=".") as f:
    f.write(b"scratch" * 1000)
    f.seek(0)
    assert f.read() == b"scratch" * 1000
print(sorted(os.listdir(".")))
PY"#);
    assert_eq!(out, "EOPNOTSUPP\n['SOUL.md']\n");
    s.settle();
    assert_eq!(s.read("SOUL.md"), b"soul");
    assert_eq!(s.ok(&["cat", "SOUL.md"]), "soul");
}

/// A name that is not UTF-8 cannot be kept in the catalogue: the file is passed through
/// untouched, not versioned, and said so (logged, and listed by `status`). A file renamed from
/// such a name to a versioned one is captured; one renamed to such a name is gone from the
/// tree's history, its earlier versions kept.
#[test]
fn names_that_are_not_utf8_are_passed_through_and_listed() {
    use std::os::unix::ffi::OsStrExt;
    let s = Sandbox::new();
    s.write("workspace/kept.md", b"kept");
    s.mount();
    let out = s.sh(r#"python3 - <<'PY'
import os
def put(p, b):
    with open(p, "wb") as f:
        f.write(b)
put(b"workspace/caf\xe9.md", b"one")
put(b"workspace/na\xefve.md", b"two")
os.rename(b"workspace/na\xefve.md", b"workspace/naive.md")
os.rename(b"workspace/kept.md", b"workspace/kept\xff.md")
os.mkdir(b"tmp")
put(b"tmp/\xfe", b"scratch")
print(sorted(os.listdir(b"workspace")))
PY"#);
    assert_eq!(
        out, "[b'caf\\xe9.md', b'kept\\xff.md', b'naive.md']\n",
        "the names are the bytes written"
    );
    s.settle();
    let real =
        |name: &[u8]| std::fs::read(s.path("workspace").join(std::ffi::OsStr::from_bytes(name)));
    assert_eq!(real(b"caf\xe9.md").unwrap(), b"one");
    assert_eq!(real(b"kept\xff.md").unwrap(), b"kept");
    assert_eq!(s.ok(&["cat", "workspace/naive.md"]), "two");
    assert_eq!(s.json(&["history", "workspace/kept.md"])[0]["op"], "delete");
    let st = &s.json(&["status"])[0];
    assert_eq!(
        st["not_utf8"],
        serde_json::json!([
            "workspace/caf\u{fffd}.md",
            "workspace/kept\u{fffd}.md",
            "workspace/na\u{fffd}ve.md"
        ]),
        "{st}"
    );
    let text = s.ok(&["status"]);
    assert!(
        text.contains("not UTF-8   workspace/caf\u{fffd}.md and 2 more"),
        "{text}"
    );
    s.unmount();
    assert_eq!(real(b"caf\xe9.md").unwrap(), b"one");
    assert_eq!(
        std::fs::read(s.path("tmp").join(std::ffi::OsStr::from_bytes(b"\xfe"))).unwrap(),
        b"scratch"
    );
}

#[test]
fn concurrent_writers_and_appends_are_all_recorded() {
    let s = Sandbox::new();
    s.mount();
    s.sh("for w in 1 2 3 4; do (for i in $(seq 1 200); do echo \"writer $w line $i\" >> log-$w.jsonl; done) & done; wait");
    s.sh("for w in 1 2 3 4; do test $(wc -l < log-$w.jsonl) = 200; done");
    s.settle();
    for w in 1..=4 {
        s.assert_newest_is_the_file(&format!("log-{w}.jsonl"));
    }
}

/// Writers of one file by every path at once: write-only descriptors (direct writes),
/// read-write ones (through the page cache) and a shared mapping, each at random offsets. The
/// daemon writes the real file and records in one order, so the newest version is the file.
#[test]
fn direct_cached_and_mapped_writers_of_one_file_leave_the_history_equal_to_it() {
    let s = Sandbox::new();
    s.mount();
    let out = s.sh(r#"python3 - <<'PY'
import mmap, os, random
from multiprocessing import Process
N = 1 << 20
with open("shared.bin", "wb") as f:
    f.write(b"\0" * N)
def writer(k):
    rnd = random.Random(k)
    fd = os.open("shared.bin", os.O_WRONLY if k % 2 else os.O_RDWR)
    for _ in range(1500):
        off, n = rnd.randrange(0, N - 9000), rnd.randrange(1, 9000)
        os.pwrite(fd, bytes([65 + k]) * n, off)
    os.close(fd)
def mapper():
    fd = os.open("shared.bin", os.O_RDWR)
    m = mmap.mmap(fd, N)
    rnd = random.Random(99)
    for i in range(1500):
        off = rnd.randrange(0, N - 100)
        m[off:off + 50] = b"m" * 50
        if i % 100 == 0:
            m.flush()
    m.flush(); m.close(); os.close(fd)
ps = [Process(target=writer, args=(k,)) for k in range(4)] + [Process(target=mapper)]
for p in ps: p.start()
for p in ps: p.join()
print(sum(p.exitcode for p in ps))
PY"#);
    assert_eq!(out.trim(), "0");
    s.settle();
    s.assert_newest_is_the_file("shared.bin");
}

/// The store holds every version of every file, secrets included, in plain form: it is its
/// owner's alone, whatever the umask (the daemon runs with 0), and a store directory left open
/// by an older build is closed at the next mount.
#[test]
fn the_store_is_private_to_its_owner() {
    use std::os::unix::fs::PermissionsExt;
    let s = Sandbox::new();
    std::fs::create_dir_all(&s.store).unwrap();
    std::fs::set_permissions(&s.store, std::fs::Permissions::from_mode(0o755)).unwrap();
    s.mount();
    s.write("credentials/token.json", b"{\"token\": \"secret\"}");
    s.settle();
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().mode() & 0o777;
    assert_eq!(mode(&s.store), 0o700);
    let packs: Vec<_> = std::fs::read_dir(s.store.join("packs"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert!(!packs.is_empty());
    for p in &packs {
        if p.is_dir() {
            // The chunk index: a directory of files, private like the rest.
            assert_eq!(mode(p), 0o700, "{}", p.display());
            for f in std::fs::read_dir(p).unwrap() {
                let f = f.unwrap().path();
                assert_eq!(mode(&f), 0o600, "{}", f.display());
            }
        } else {
            assert_eq!(mode(p), 0o600, "{}", p.display());
        }
    }
    assert_eq!(mode(&s.store.join("daemon.log")), 0o600);
    s.unmount();
}

#[test]
fn mount_errors_are_clear() {
    let s = Sandbox::new();
    let missing = s.home.path().join("nope");
    let err = s.fails(&["mount", missing.to_str().unwrap()]);
    assert!(err.contains("does not exist"), "{err}");
    // The store inside the directory it versions.
    let inside = s.dir.join("store");
    let out = std::process::Command::new(common::bin())
        .env("HOME", s.home.path())
        .args([
            "--store",
            inside.to_str().unwrap(),
            "mount",
            s.dir.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("inside"));
    s.mount();
    let err = s.fails(&["mount", s.dir.to_str().unwrap()]);
    assert!(err.contains("already mounted"), "{err}");
}

/// Puts /dev/fuse's mode back when dropped.
struct DevFuseMode(u32);

impl Drop for DevFuseMode {
    fn drop(&mut self) {
        use std::os::unix::fs::PermissionsExt;
        let _ = std::fs::set_permissions("/dev/fuse", std::fs::Permissions::from_mode(self.0));
    }
}

/// The usual case: a user (here `nobody`) mounts their own state directory, without root. The
/// mount goes through fusermount3, and versions and unmounts like root's. Where /dev/fuse is
/// closed to users (this machine: mode 0600; Debian makes it 0666), the refusal says so and
/// what to do, then the same user mounts once it is open.
#[test]
fn a_user_mounts_their_own_directory_without_root() {
    use std::os::unix::fs::PermissionsExt;
    let work = tempfile::tempdir().unwrap();
    std::fs::set_permissions(work.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let home = work.path().join("home");
    let dir = home.join(".openclaw");
    std::fs::create_dir_all(&dir).unwrap();
    std::os::unix::fs::chown(&home, Some(65534), Some(65534)).unwrap();
    std::os::unix::fs::chown(&dir, Some(65534), Some(65534)).unwrap();
    // Root's file and directory in the user's tree, which the user may read but not change.
    std::fs::write(dir.join("roots"), b"root's\n").unwrap();
    std::fs::create_dir(dir.join("rootdir")).unwrap();
    let bin = work.path().join("clawfs");
    std::fs::copy(common::bin(), &bin).unwrap();
    let user = |args: &[&str]| {
        std::process::Command::new("setpriv")
            .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
            .arg(&bin)
            .args(args)
            .env("HOME", &home)
            .env_remove("XDG_DATA_HOME")
            .current_dir(&home)
            .stdin(std::process::Stdio::null())
            .output()
            .unwrap()
    };
    let d = dir.to_str().unwrap();
    let mode = std::fs::metadata("/dev/fuse").unwrap().permissions().mode() & 0o777;
    let _restore = DevFuseMode(mode);
    if mode & 0o006 != 0o006 {
        let out = user(&["mount", d]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success());
        assert!(
            err.contains("cannot open /dev/fuse") && err.contains("chmod 0666 /dev/fuse"),
            "{err}"
        );
        std::fs::set_permissions("/dev/fuse", std::fs::Permissions::from_mode(0o666)).unwrap();
    }
    let out = user(&["mount", d]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let _unmount = LazyUnmount(dir.clone());
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap();
    assert!(
        mounts
            .lines()
            .any(|l| l.contains(d) && l.contains("fuse.clawfs")),
        "{mounts}"
    );
    // (Root itself may not enter a user's mount, without allow_other: `cd` as the user.)
    as_nobody(
        &home,
        &format!("cd {d} && echo calm > SOUL.md && echo reckless > SOUL.md"),
    );
    // The mount checks permissions as the real file system does for the user (the daemon's
    // calls, as that user, meet them): `access`, `chdir`, opens, changes of root's files.
    as_nobody(
        &home,
        &format!(
            r#"set -e
            denied() {{ if "$@" 2>/dev/null; then echo "allowed: $*"; exit 1; fi; }}
            cd {d}
            echo secret > locked; chmod 000 locked
            denied cat locked
            denied test -r locked
            echo ro > ro; chmod 444 ro
            test -r ro; denied test -w ro; denied test -x ro
            denied sh -c 'echo x >> ro'
            mkdir shut; chmod 600 shut
            denied cd shut
            chmod 700 shut; cd shut; cd ..
            test -r roots; denied test -w roots
            denied sh -c 'echo x >> roots'
            denied chmod 666 roots
            denied touch rootdir/x"#
        ),
    );
    std::thread::sleep(std::time::Duration::from_millis(1200));
    let history = user(&["history", "SOUL.md"]);
    let text = String::from_utf8_lossy(&history.stdout);
    assert_eq!(text.lines().count(), 2, "{text}");
    let out = user(&["unmount", d]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap();
    assert!(!mounts.lines().any(|l| l.contains(d)), "{mounts}");
    assert_eq!(std::fs::read(dir.join("SOUL.md")).unwrap(), b"reckless\n");
    assert_eq!(std::fs::read(dir.join("roots")).unwrap(), b"root's\n");
}

/// Detaches a mount left behind by a failed test.
struct LazyUnmount(std::path::PathBuf);

impl Drop for LazyUnmount {
    fn drop(&mut self) {
        let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
        if mounts.lines().any(|l| l.contains(self.0.to_str().unwrap())) {
            let _ = std::process::Command::new("fusermount3")
                .args(["-u", "-z"])
                .arg(&self.0)
                .status();
        }
    }
}

/// A full store disk costs versions, never files, and versioning resumes by itself once there
/// is room: what changed meanwhile is captured as it is then, without a remount. The disk is
/// filled by something else (as a full root file system would be), so that the store's own
/// small writes are what meets it: the catalogue (sled) fails for good once one of its writes
/// does, which is why the store keeps room for it.
#[test]
fn a_full_store_disk_costs_versions_never_files_and_versioning_resumes_with_room() {
    let s = Sandbox::new();
    let _fs = common::SmallFs::mount(&s.store, "64m");
    s.mount();
    let blob = |i: u32| -> Vec<u8> {
        let mut x = 0x9e37_79b9_u32.wrapping_mul(i + 1);
        (0..1 << 20)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                x as u8
            })
            .collect()
    };
    s.write("notes.md", b"first line\n");
    s.settle();
    // Something else fills the store's disk, to 300 KiB from full.
    let ballast = s.store.join("ballast");
    let fill = || common::fill_disk(&s.store, &ballast, 300 << 10);
    fill();
    // Every write succeeds, because the real files do not live in the store. The small files
    // first: their chunks would fit, their epochs' records are what would fill the disk.
    for i in 0..2000 {
        s.write(
            &format!("small/s{i:04}.txt"),
            format!("small {i}\n").as_bytes(),
        );
    }
    for i in 0..8 {
        s.write(&format!("data/f{i}.bin"), &blob(i));
    }
    s.sh("printf 'second line\n' >> notes.md");
    for i in 0..8 {
        assert!(s.read(&format!("data/f{i}.bin")) == blob(i), "f{i}");
    }
    s.settle();
    let st = &s.json(&["status"])[0];
    let err = st["last_error"].as_str().unwrap_or_default().to_string();
    assert!(err.contains("the store's disk is full"), "status: {st}");
    assert!(st["uncaptured"].as_u64().unwrap() > 0, "status: {st}");
    let (free, reserve) = (
        st["store_disk_free"].as_u64(),
        st["store_disk_reserve"].as_u64(),
    );
    assert!(free.unwrap() < reserve.unwrap(), "status: {st}");
    let text = String::from_utf8_lossy(&s.raw(&["status"]).stdout).into_owned();
    assert!(text.contains("are not versioned yet"), "{text}");
    assert!(text.contains("its disk is full"), "{text}");
    // Room again, and no remount: a write before the recorder looks again lands on what it
    // holds of notes.md, which lacks the line it dropped; the capture must not keep that.
    std::fs::remove_file(&ballast).unwrap();
    s.sh("printf 'third line\n' >> notes.md");
    common::eventually(
        "versioning to resume and capture what changed meanwhile",
        || s.json(&["status"])[0]["uncaptured"].as_u64() == Some(0),
    );
    s.settle();
    for i in [0, 7] {
        let out = s.raw(&["cat", &format!("data/f{i}.bin")]);
        assert!(
            out.status.success() && out.stdout == blob(i),
            "f{i} is not versioned once there was room: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    assert_eq!(s.raw(&["cat", "small/s1999.txt"]).stdout, b"small 1999\n");
    assert_eq!(
        s.raw(&["cat", "notes.md"]).stdout,
        b"first line\nsecond line\nthird line\n"
    );
    let st = &s.json(&["status"])[0];
    let err = st["last_error"].as_str().unwrap_or_default();
    assert!(err.contains("could not be versioned"), "status: {st}");
    let text = String::from_utf8_lossy(&s.raw(&["status"]).stdout).into_owned();
    assert!(!text.contains("its disk is full"), "{text}");
    // Versioning goes on as before.
    s.write("after.txt", b"after");
    s.settle();
    assert_eq!(s.raw(&["cat", "after.txt"]).stdout, b"after");
    // Unmounting works, and leaves the plain files.
    s.unmount();
    for i in 0..8 {
        assert!(s.read(&format!("data/f{i}.bin")) == blob(i), "f{i}");
    }
    // Mounting on a full disk works and says so; what changed while unmounted is captured once
    // there is room.
    s.write("after.txt", b"changed while unmounted");
    fill();
    let d = s.dir.to_str().unwrap().to_string();
    let out = s.raw(&["mount", &d]);
    let said = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{said}");
    assert!(said.contains("warning: the store's disk is full"), "{said}");
    assert_eq!(s.raw(&["cat", "after.txt"]).stdout, b"after");
    std::fs::remove_file(&ballast).unwrap();
    common::eventually("what changed while unmounted to be captured", || {
        s.raw(&["cat", "after.txt"]).stdout == b"changed while unmounted"
    });
    s.unmount();
}

/// A full disk under the real files: a write that only partly fits is the short write the plain
/// file system gives (it used to fail whole, with its first part written anyway, so the writer
/// and the history both missed bytes the file had), the next write fails with ENOSPC, and the
/// version recorded is exactly the real file.
#[test]
fn a_full_real_disk_gives_the_short_write_and_enospc_of_the_plain_file_system() {
    let s = Sandbox::new();
    let _fs = common::SmallFs::mount(&s.dir, "1m");
    s.mount();
    let out = s.sh(r#"python3 -c "
import os
f = os.open('big', os.O_WRONLY | os.O_CREAT, 0o644)
os.write(f, b'a' * 1000)
print(os.write(f, b'x' * (2 << 20)))
try:
    os.write(f, b'y' * 4096)
    print('written')
except OSError as e:
    print(e.errno)
os.close(f)
""#);
    let got: Vec<&str> = out.split_whitespace().collect();
    assert_eq!(got, ["1047576", "28"], "{out}");
    s.settle();
    let real = s.read("big");
    assert_eq!(real.len(), 1 << 20);
    assert!(
        s.raw(&["cat", "big"]).stdout == real,
        "the version is not the real file"
    );
    s.unmount();
}

/// A sparse file (`truncate -s`, as disk images and preallocating writers make) is versioned
/// at once, the writers after it are not held up, the store does not grow by its zeros, and a
/// rollback brings it back sparse. The recorder used to hash every zero: `truncate -s 20G` kept
/// it busy for a minute while every other writer waited on the full channel.
#[test]
fn a_sparse_file_of_64_gib_is_versioned_at_once_and_rolled_back_sparse() {
    let s = Sandbox::new();
    s.mount();
    let size = 64u64 << 30;
    s.sh("truncate -s 64G disk.img && printf tail >> disk.img");
    let before = s.settle();
    s.write("after.txt", b"written after");
    common::eventually("the file written after it to be versioned", || {
        s.raw(&["cat", "after.txt"]).stdout == b"written after"
    });
    s.sh(r#"python3 -c "import os; f = os.open('disk.img', os.O_WRONLY); os.pwrite(f, b'middle', 32 << 30)""#);
    s.settle();
    let versions = s.json(&["history", "disk.img"]);
    assert!(versions.len() >= 3, "{versions:?}");
    assert_eq!(versions[0]["size"].as_u64(), Some(size + 4), "{versions:?}");
    let packs: u64 = std::fs::read_dir(s.store.join("packs"))
        .unwrap()
        .map(|e| e.unwrap().metadata().unwrap().len())
        .sum();
    assert!(packs < 4 << 20, "the zeros took {packs} bytes of packs");

    s.ok(&[
        "rollback",
        "--to",
        &format!("#{before}"),
        "--yes",
        "disk.img",
    ]);
    let real = std::fs::File::open(s.path("disk.img")).unwrap();
    let md = real.metadata().unwrap();
    assert_eq!(md.len(), size + 4);
    assert!(
        md.blocks() * 512 < 1 << 20,
        "rolled back dense: {} blocks",
        md.blocks()
    );
    let at = |off: u64, n: usize| {
        let mut b = vec![1u8; n];
        std::os::unix::fs::FileExt::read_exact_at(&real, &mut b, off).unwrap();
        b
    };
    assert_eq!(at(32 << 30, 6), vec![0; 6]);
    assert_eq!(at(size, 4), b"tail");
    drop(real);
    s.unmount();
}

/// Runs a shell command as `nobody`.
fn as_nobody(dir: &std::path::Path, script: &str) {
    let st = std::process::Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "sh",
            "-c",
            script,
        ])
        .current_dir(dir)
        .status()
        .unwrap();
    assert!(st.success(), "as nobody: {script}");
}

/// The permission bits as `stat -c %a` sees them: a `statx` for the mode alone.
fn mode_alone(path: &std::path::Path) -> u32 {
    let out = std::process::Command::new("stat")
        .args(["-c", "%a"])
        .arg(path)
        .output()
        .unwrap();
    assert!(out.status.success(), "stat {}", path.display());
    u32::from_str_radix(String::from_utf8_lossy(&out.stdout).trim(), 8).unwrap()
}

/// Writing, truncating or allocating in a set-user-ID file without privilege clears the bit (and set-group-ID
/// when group-executable), as on the real file system; the daemon does it (the kernel leaves it
/// to us, see `drop_suid`), and the history records the new mode. So under a path that is not
/// versioned: a set-ID file is never passed through.
#[test]
fn unprivileged_writes_clear_set_id_bits_as_natively() {
    use std::os::unix::fs::PermissionsExt;
    let s = Sandbox::new();
    let plain = s.home.path().join("plain");
    std::fs::create_dir_all(&plain).unwrap();
    // Under tmp/, not versioned, files are passed through to the kernel: it writes them with the
    // daemon's privilege, which would keep the bits.
    let unversioned = s.dir.join("tmp");
    std::fs::create_dir_all(&unversioned).unwrap();
    for d in [
        s.home.path(),
        s.dir.as_path(),
        plain.as_path(),
        unversioned.as_path(),
    ] {
        std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    s.mount();
    let cases = [
        // Write-only: a direct write (`direct_writes`); read-write: through the page cache.
        ("write", "printf x >> f"),
        ("write_read_write", "printf x 1<> f"),
        ("truncate", "truncate -s 1 f"),
        ("o_trunc", ": > f"),
        ("fallocate", "fallocate -l 8192 f"),
        ("punch", "fallocate -p -o 0 -l 2 f"),
    ];
    for dir in [plain.as_path(), s.dir.as_path(), unversioned.as_path()] {
        for (name, script) in cases {
            for (mode, after) in [(0o6777, 0o0777), (0o6767, 0o2767)] {
                let f = dir.join("f");
                std::fs::write(&f, b"data").unwrap();
                std::os::unix::fs::chown(&f, Some(65534), Some(65534)).unwrap();
                std::fs::set_permissions(&f, std::fs::Permissions::from_mode(mode)).unwrap();
                as_nobody(dir, script);
                // First `stat -c %a`: it asks for the mode alone, which a write does not make the
                // kernel fetch again (the daemon must say it changed).
                let only_mode = mode_alone(&f);
                assert_eq!(
                    only_mode,
                    after,
                    "{name} of a {mode:o} file in {}, mode alone: {only_mode:o}",
                    dir.display()
                );
                let got = std::fs::metadata(&f).unwrap().permissions().mode() & 0o7777;
                assert_eq!(
                    got,
                    after,
                    "{name} of a {mode:o} file in {}: {got:o}",
                    dir.display()
                );
            }
        }
        // Root keeps the bits (CAP_FSETID).
        let f = dir.join("f");
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o6777)).unwrap();
        std::fs::write(&f, b"root").unwrap();
        assert_eq!(
            std::fs::metadata(&f).unwrap().permissions().mode() & 0o7777,
            0o6777
        );
    }
    // The versioned mode follows the real one: a view of the newest moment shows it.
    as_nobody(&s.dir, "printf y >> f");
    let seq = s.settle().to_string();
    let view = s.home.path().join("view");
    std::fs::create_dir_all(&view).unwrap();
    s.ok(&["browse", view.to_str().unwrap(), "--at", &seq]);
    let got = std::fs::metadata(view.join("f"))
        .unwrap()
        .permissions()
        .mode()
        & 0o7777;
    s.ok(&["unmount", view.to_str().unwrap()]);
    // The set-ID bits cleared, as in the real file.
    assert_eq!(got, 0o0777, "{got:o}");
}

/// An access ACL rewrites a file's group bits (they become the ACL's mask). A `stat` for the
/// mode alone right after shows them, as natively: the kernel caches attributes and would not ask
/// again by itself.
#[test]
fn an_access_acl_shows_the_mode_it_implies_at_once() {
    let s = Sandbox::new();
    s.mount();
    s.write("f", b"x");
    s.sh(r#"chmod 0744 f && stat -c %a f >/dev/null && python3 - <<'PY'
import os, struct
# user::rwx, user:65534:r--, group::r--, mask::rw-, other::r--
entries = [(0x01, 7, -1), (0x02, 4, 65534), (0x04, 4, -1), (0x10, 6, -1), (0x20, 4, -1)]
acl = struct.pack("<I", 2) + b"".join(struct.pack("<HHI", t, p, i & 0xFFFFFFFF) for t, p, i in entries)
os.setxattr("f", "system.posix_acl_access", acl)
PY"#);
    let got = mode_alone(&s.path("f"));
    assert_eq!(got, 0o764, "{got:o}");
}

#[test]
fn a_walk_over_more_files_than_the_daemon_may_open_leaves_the_mount_writable() {
    // Every file a walk looks at stays cached in the kernel. The daemon may hold 256
    // descriptors here: had it kept one per cached inode, every open after ~220 files
    // would have failed with EMFILE.
    let s = Sandbox::new();
    let mut mount = s.cmd();
    mount.args(["mount", s.dir.to_str().unwrap()]);
    // SAFETY: setrlimit is async-signal-safe and touches only the child's own limits.
    unsafe {
        mount.pre_exec(|| {
            let lim = libc::rlimit {
                rlim_cur: 256,
                rlim_max: 256,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    common::assert_ok(&mount.output().unwrap());
    assert!(s.is_mounted());
    let out = s.sh(r#"python3 - <<'PY'
import os
os.makedirs("skills/many", exist_ok=True)
for i in range(1500):
    with open("skills/many/f%04d.md" % i, "w") as f: f.write("note %d\n" % i)
for i in range(1500): os.stat("skills/many/f%04d.md" % i)
n = sum(1 for _ in os.scandir("skills/many"))
with open("MEMORY.md", "w") as f: f.write("still writable\n")
print(n, open("MEMORY.md").read().strip(), open("skills/many/f0007.md").read().strip())
# Each removal holds its inode until the kernel forgets it: a tree removed must not leave the
# daemon short of descriptors either.
import shutil
shutil.rmtree("skills/many")
with open("SOUL.md", "w") as f: f.write("after the removal\n")
print(open("SOUL.md").read().strip(), os.path.exists("skills/many"))
PY"#);
    assert_eq!(
        out.trim(),
        "1500 still writable note 7\nafter the removal False"
    );
    s.settle();
    // Created, then removed.
    assert_eq!(s.json(&["history", "skills/many/f1499.md"]).len(), 2);
    assert_eq!(s.json(&["history", "MEMORY.md"]).len(), 1);
    assert_eq!(s.json(&["history", "SOUL.md"]).len(), 1);
    s.unmount();
    assert_eq!(s.read("MEMORY.md"), b"still writable\n");
}

/// A process standing in directory `rel` of the mount, so the kernel keeps its inode.
fn stand_in(s: &Sandbox, rel: &str) -> std::process::Child {
    std::process::Command::new("sleep")
        .arg("60")
        .current_dir(s.path(rel))
        .spawn()
        .unwrap()
}

/// Makes 20 new directories, each holding a file that reads back; the first that got inode
/// number `old`, if any. Stops `inside` either way.
fn new_dirs_taking(s: &Sandbox, old: u64, mut inside: std::process::Child) -> Option<String> {
    let mut taken = None;
    for i in 0..20 {
        let e = s.path(&format!("e{i}"));
        std::fs::create_dir(&e).unwrap();
        if std::fs::metadata(&e).unwrap().ino() == old {
            taken = Some(format!("e{i}"));
            break;
        }
        std::fs::write(e.join("x"), format!("new {i}")).unwrap();
        assert_eq!(
            std::fs::read_to_string(e.join("x")).unwrap(),
            format!("new {i}")
        );
    }
    let _ = inside.kill();
    let _ = inside.wait();
    taken
}

#[test]
fn a_removed_directory_still_in_use_keeps_its_inode_number_from_new_files() {
    // ext4 gives a freed inode number to the next new inode. While a process stands in a
    // removed directory the kernel still caches its inode under that number (the node id):
    // a new directory given the number would be taken for the removed one.
    let s = Sandbox::new();
    s.mount();
    std::fs::create_dir(s.path("d")).unwrap();
    let old = std::fs::metadata(s.path("d")).unwrap().ino();
    let inside = stand_in(&s, "d");
    std::fs::remove_dir(s.path("d")).unwrap();
    if let Some(e) = new_dirs_taking(&s, old, inside) {
        panic!("{e} got the inode number of the removed d");
    }
}

#[test]
fn a_directory_a_rollback_removes_while_a_process_stands_in_it_keeps_its_inode_number() {
    // A rollback changes the real tree behind the kernel's back: what it removes, the kernel
    // may still cache, and the number must not go to a new directory meanwhile.
    let s = Sandbox::new();
    s.write("SOUL.md", b"calm\n");
    s.mount();
    s.ok(&["mark", "before"]);
    s.write("skills/new/SKILL.md", b"compromised\n");
    let old = std::fs::metadata(s.path("skills/new")).unwrap().ino();
    let inside = stand_in(&s, "skills/new");
    s.settle();
    s.ok(&["rollback", "--to", "before", "--yes"]);
    assert!(!s.path("skills/new").exists());
    if let Some(e) = new_dirs_taking(&s, old, inside) {
        panic!("{e} got the inode number of the removed skills/new");
    }
}

/// Opens `path` with raw `open(2)` flags (std refuses `O_RDONLY | O_TRUNC`).
fn open_raw(path: &std::path::Path, flags: i32) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut o = std::fs::OpenOptions::new();
    match flags & libc::O_ACCMODE {
        libc::O_WRONLY => o.write(true),
        libc::O_RDWR => o.read(true).write(true),
        _ => o.read(true),
    };
    o.custom_flags(flags & !libc::O_ACCMODE).open(path)
}

#[test]
fn a_running_program_opened_to_truncate_is_refused_and_left_whole() {
    // The kernel refuses `open(O_RDONLY | O_TRUNC)` of a program being run (ETXTBSY) only
    // after the file system opened it. When the daemon truncated in OPEN, the program was cut
    // to 0 bytes under that refusal, every time, and died of SIGBUS when it next faulted a page
    // in; pjdfstest's open::etxtbsy then failed once in ~170 runs, when it already had.
    let s = Sandbox::new();
    s.mount();
    let prog = s.path("sleeper");
    std::fs::copy("/bin/sleep", &prog).unwrap();
    std::fs::set_permissions(&prog, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let size = std::fs::metadata(&prog).unwrap().len();
    let mut child = std::process::Command::new(&prog).arg("60").spawn().unwrap();
    for flags in [libc::O_WRONLY, libc::O_RDWR, libc::O_RDONLY | libc::O_TRUNC] {
        let err = open_raw(&prog, flags).expect_err("opened a running program to write");
        assert_eq!(
            err.raw_os_error(),
            Some(libc::ETXTBSY),
            "flags {flags:#o}: {err}"
        );
        assert_eq!(
            std::fs::metadata(&prog).unwrap().len(),
            size,
            "flags {flags:#o}"
        );
    }
    assert!(child.try_wait().unwrap().is_none(), "the program died");
    child.kill().unwrap();
    child.wait().unwrap();
    // Not running, it is truncated by that open as natively, and the truncation is versioned.
    open_raw(&prog, libc::O_RDONLY | libc::O_TRUNC).unwrap();
    assert_eq!(std::fs::metadata(&prog).unwrap().len(), 0);
    s.settle();
    let versions = s.json(&["history", "sleeper"]);
    assert_eq!(versions[0]["size"].as_u64(), Some(0), "{versions:?}");
    assert_eq!(versions[1]["size"].as_u64(), Some(size), "{versions:?}");
    s.unmount();
    assert_eq!(std::fs::metadata(&prog).unwrap().len(), 0);
}

/// SQLite in WAL mode (a new database `db`), 300 small files written and removed, a rename:
/// the same through either request path. Returns how many moments it made (each small file
/// makes two: its close and its unlink).
fn work_through_the_mount(s: &Sandbox, db: &str) -> u64 {
    let before = s.head();
    s.sh("mkdir -p state");
    s.sh(&format!(
        "python3 - <<'PY'\n{}\nPY",
        common::wal_writer(db, 300, 5, 100)
    ));
    assert_eq!(
        s.sh(&format!(
            "sqlite3 {db} 'PRAGMA integrity_check; select count(*) from t;'"
        )),
        "ok\n300\n"
    );
    s.sh(r#"python3 - <<'PY'
import os
os.makedirs("small", exist_ok=True)
for i in range(300):
    with open("small/f%d" % i, "wb") as f: f.write(os.urandom(4096))
for i in range(300):
    os.unlink("small/f%d" % i)
with open("memory.tmp", "w") as f: f.write("remember this\n")
os.rename("memory.tmp", "MEMORY.md")
PY"#);
    assert_eq!(s.sh("cat MEMORY.md"), "remember this\n");
    assert_eq!(
        s.ok(&["cat", "MEMORY.md", "--at", "now"]),
        "remember this\n"
    );
    s.head() - before
}

/// The daemon takes requests through io_uring rings, one queue per CPU, when the kernel offers
/// it (`scripts/test.sh` turns on the fuse module's `enable_uring`), and through /dev/fuse when
/// the mount says `-o io_uring=off`; `status` says which, and why not io_uring.
#[test]
fn requests_come_through_io_uring_when_offered_and_through_dev_fuse_when_turned_off() {
    let s = Sandbox::new();
    let d = s.dir.to_str().unwrap().to_string();
    s.mount();
    // The rings are set up just after the mount is ready (requests come through /dev/fuse
    // meanwhile).
    let mut status = String::new();
    common::eventually("the request path to settle", || {
        status = s.ok(&["status", &d]);
        !status.contains("io_uring starting")
    });
    let json = &s.json(&["status", &d])[0]["requests"];
    match std::fs::read_to_string("/sys/module/fuse/parameters/enable_uring") {
        Ok(v) if v.trim() == "Y" => {
            assert!(
                status.contains("requests    io_uring, one queue per CPU"),
                "{status}"
            );
            assert_eq!(json["io_uring"], true, "{json}");
        }
        Ok(_) => {
            assert!(status.contains("io_uring is off in the kernel"), "{status}");
            assert_eq!(json["io_uring"], false, "{json}");
        }
        Err(_) => assert!(status.contains("no FUSE over io_uring"), "{status}"),
    }
    let moments = work_through_the_mount(&s, "state/rings.sqlite");
    assert!(moments >= 600, "{moments} moments");
    if json["io_uring"] == true {
        // 1 MiB writes fill the ring entries' 1 MiB buffers; an idle second later they are
        // given back, and the file is whole. (Asked right after each write: a busy machine may
        // take the second before `status` runs.)
        let held = |s: &Sandbox| s.json(&["status", &d])[0]["requests"]["buffers_held"].as_u64();
        common::eventually("a 1 MiB write to hold ring buffers", || {
            s.sh("dd if=/dev/urandom of=big.bin bs=1M count=4 status=none");
            held(&s).unwrap() >= 1 << 20
        });
        common::eventually("the ring buffers to be given back", || held(&s) == Some(0));
        s.sh("dd if=/dev/urandom of=big.bin bs=1M count=16 seek=4 conv=notrunc status=none");
        s.settle();
        s.assert_newest_is_the_file("big.bin");
        assert_eq!(s.read("big.bin").len(), 20 << 20);
    }
    s.unmount();

    s.ok(&["mount", "-o", "io_uring=off", &d]);
    let status = s.ok(&["status", &d]);
    assert!(
        status.contains("requests    /dev/fuse (io_uring turned off with -o io_uring=off)"),
        "{status}"
    );
    assert_eq!(s.json(&["status", &d])[0]["requests"]["io_uring"], false);
    let moments = work_through_the_mount(&s, "state/device.sqlite");
    assert!(moments >= 600, "{moments} moments");
    s.unmount();
    for db in ["state/rings.sqlite", "state/device.sqlite"] {
        assert_eq!(
            sh_in(&s.dir, &format!("sqlite3 {db} 'select count(*) from t;'")).trim(),
            "300"
        );
    }

    let err = s.fails(&["mount", "-o", "io_uring=sometimes", &d]);
    assert!(
        err.contains("-o io_uring=sometimes: expected on or off"),
        "{err}"
    );
    assert!(!s.is_mounted());
}

/// While unmounted, one of a file's two names is given a new file. A mark made offline names
/// the tree as it is then (it named the moment of the last unmount), and its capture records
/// each name's own file (it captured both real files into the one file the history had for
/// the two names, the last one read winning). Found by `random_ops --offline`.
#[test]
fn a_name_given_a_new_file_while_unmounted_is_captured_apart_by_an_offline_mark() {
    let s = Sandbox::new();
    s.mount();
    s.write("d/e/a", &[b'x'; 70000]);
    std::fs::hard_link(s.path("d/e/a"), s.path("a")).unwrap();
    s.ok(&["mark", "linked"]);
    s.unmount();
    std::fs::remove_file(s.path("a")).unwrap();
    s.write("a", &[b'y'; 3000]);
    s.write("new.md", b"written while unmounted");
    s.ok(&["mark", "apart"]);
    for f in ["a", "d/e/a", "new.md"] {
        assert!(
            s.raw(&["cat", f, "--at", "apart"]).stdout == s.read(f),
            "{f} as marked is not the file"
        );
    }
    assert_eq!(
        s.raw(&["cat", "a", "--at", "linked"]).stdout,
        vec![b'x'; 70000]
    );
}
