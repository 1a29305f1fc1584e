//! Time travel: read-only views of past moments, beside the live mount and without it.

mod common;

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use common::Sandbox;

/// Every path below `root` with its mode, and its bytes or symlink target.
fn snapshot(root: &Path) -> BTreeMap<String, (u32, Vec<u8>)> {
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let e = e.unwrap();
            let p = e.path();
            let rel = p.strip_prefix(root).unwrap().to_string_lossy().into_owned();
            let m = std::fs::symlink_metadata(&p).unwrap();
            let mode = m.permissions().mode() & 0o7777;
            if m.file_type().is_symlink() {
                out.insert(
                    rel,
                    (
                        0,
                        std::fs::read_link(&p)
                            .unwrap()
                            .into_os_string()
                            .into_encoded_bytes(),
                    ),
                );
            } else if m.is_dir() {
                out.insert(rel, (mode, b"<dir>".to_vec()));
                stack.push(p);
            } else {
                out.insert(rel, (mode, std::fs::read(&p).unwrap()));
            }
        }
    }
    out
}

fn browse(s: &Sandbox, mp: &Path, at: Option<&str>) {
    std::fs::create_dir_all(mp).unwrap();
    let mut args = vec!["browse", mp.to_str().unwrap()];
    if let Some(a) = at {
        args.extend(["--at", a]);
    }
    s.ok(&args);
}

#[test]
fn past_moments_read_back_exactly_beside_the_live_mount_and_without_it() {
    let s = Sandbox::new();
    s.mount();
    let copies = s.home.path().join("copies");
    let mut moments = Vec::new();
    for round in 0..4 {
        s.write(
            &format!("workspace/note-{round}.md"),
            format!("note {round}\n").repeat(round * 500 + 1).as_bytes(),
        );
        s.write(
            "openclaw.json",
            format!("{{\"round\": {round}}}\n").as_bytes(),
        );
        std::fs::set_permissions(
            s.path("openclaw.json"),
            std::fs::Permissions::from_mode(0o600 + round as u32 * 0o10),
        )
        .unwrap();
        // A `user.` attribute longer than Python's first guess at its size (128 bytes).
        common::sh_in(
            &s.dir,
            &format!("python3 -c 'import os; os.setxattr(\"openclaw.json\", \"user.round\", b\"{round}\" * 300)'"),
        );
        if round == 1 {
            std::os::unix::fs::symlink("workspace/note-0.md", s.path("latest")).unwrap();
        }
        if round == 2 {
            std::fs::remove_file(s.path("workspace/note-1.md")).unwrap();
        }
        let seq = s.settle();
        let copy = copies.join(round.to_string());
        common::sh_in(
            s.home.path(),
            &format!(
                "mkdir -p {0} && cp -a {1}/. {0}/",
                copy.display(),
                s.dir.display()
            ),
        );
        moments.push((seq, copy));
    }
    // Beside the live mount: one view per moment, compared byte for byte.
    for (seq, copy) in &moments {
        let mp = s.home.path().join(format!("view-{seq}"));
        browse(&s, &mp, Some(&seq.to_string()));
        assert_eq!(snapshot(&mp), snapshot(copy), "moment {seq}");
        // Its `user.` attributes as they were, for `cp -a` to copy out.
        let attrs = |dir: &Path| {
            common::sh_in(dir, "python3 -c 'import os; print(os.listxattr(\"openclaw.json\"), os.getxattr(\"openclaw.json\", \"user.round\"))'")
        };
        assert_eq!(attrs(&mp), attrs(copy), "moment {seq}");
        let shown = attrs(&mp);
        assert!(shown.starts_with("['user.round'] b'"), "{shown}");
        // Writes fail with EROFS.
        let err = std::fs::write(mp.join("openclaw.json"), b"x").unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::EROFS));
        let err = std::fs::create_dir(mp.join("new")).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::EROFS));
        s.ok(&["unmount", mp.to_str().unwrap()]);
    }
    // The at/ marks/ history/ layout.
    s.ok(&["mark", "checkpoint"]);
    let mp = s.home.path().join("wander");
    browse(&s, &mp, None);
    let (first, first_copy) = &moments[0];
    assert_eq!(
        snapshot(&mp.join(format!("at/{first}"))),
        snapshot(first_copy)
    );
    assert_eq!(
        std::fs::read(mp.join("marks/checkpoint/openclaw.json")).unwrap(),
        b"{\"round\": 3}\n"
    );
    assert!(std::fs::read_dir(mp.join("at"))
        .unwrap()
        .any(|e| e.unwrap().file_name() == "checkpoint"));
    assert_eq!(
        std::fs::read(mp.join("at/now/openclaw.json")).unwrap(),
        b"{\"round\": 3}\n"
    );
    let bad = std::fs::metadata(mp.join("at/not-a-time"));
    assert_eq!(bad.unwrap_err().raw_os_error(), Some(libc::ENOENT));
    let versions: Vec<String> = std::fs::read_dir(mp.join("history/openclaw.json"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    // Every version (content writes and chmods alike) is there and reads back as `cat --at`.
    let history = s.json(&["history", "openclaw.json"]);
    assert_eq!(versions.len(), history.len(), "{versions:?}");
    let mut bodies = std::collections::BTreeSet::new();
    for v in &versions {
        let seq = v.rsplit('#').next().unwrap();
        let body = std::fs::read(mp.join("history/openclaw.json").join(v)).unwrap();
        assert_eq!(
            body,
            s.ok(&["cat", "openclaw.json", "--at", seq]).into_bytes(),
            "{v}"
        );
        bodies.insert(body);
    }
    let want: std::collections::BTreeSet<Vec<u8>> = (0..4)
        .map(|r| format!("{{\"round\": {r}}}\n").into_bytes())
        .collect();
    assert_eq!(bodies, want);
    s.ok(&["unmount", mp.to_str().unwrap()]);

    // Without the live mount: a view of its own.
    s.unmount();
    let (last, last_copy) = moments.last().unwrap();
    let mp = s.home.path().join("offline-view");
    browse(&s, &mp, Some(&last.to_string()));
    assert_eq!(snapshot(&mp), snapshot(last_copy));
    // Python asks TCGETS of every file it opens: ENOTTY, and no line in the view's log.
    let out = common::sh_in(
        &mp,
        "python3 -c 'import glob; fs = [open(p, \"rb\") for p in glob.glob(\"**/*.json\", recursive=True)]; assert fs and not any(f.isatty() for f in fs); print(len(fs))'",
    );
    assert!(out.trim().parse::<u32>().unwrap() > 0, "{out}");
    s.ok(&["unmount", mp.to_str().unwrap()]);
    let log = std::fs::read_to_string(s.store.join("browse.log")).unwrap_or_default();
    assert!(!log.contains("ioctl"), "{log}");
    let err = s.fails(&["unmount", mp.to_str().unwrap()]);
    assert!(err.contains("not mounted"), "{err}");
}

/// A sparse file of the past copies out sparse: the view shows its holes in `st_blocks` and
/// answers `SEEK_DATA` and `SEEK_HOLE`, so `cp` writes holes, not gigabytes of zeros.
#[test]
fn a_past_sparse_file_copies_out_sparse() {
    use std::os::unix::fs::MetadataExt;
    let s = Sandbox::new();
    s.mount();
    let size = (8u64 << 30) + 4;
    s.sh("truncate -s 8G disk.img && printf tail >> disk.img");
    let seq = s.settle();
    let mp = s.home.path().join("view");
    browse(&s, &mp, Some(&format!("#{seq}")));
    let _view = common::LazyUnmount(&mp);
    let img = mp.join("disk.img");
    let md = std::fs::metadata(&img).unwrap();
    assert_eq!(md.len(), size);
    assert!(md.blocks() * 512 < 1 << 20, "{} blocks", md.blocks());
    let seeks = common::sh_in(
        &mp,
        r#"python3 -c "
import os
f = os.open('disk.img', os.O_RDONLY)
d = os.lseek(f, 0, os.SEEK_DATA)
print(os.lseek(f, 0, os.SEEK_HOLE), d, os.lseek(f, d, os.SEEK_HOLE))
try:
    os.lseek(f, os.fstat(f).st_size, os.SEEK_DATA)
except OSError as e:
    print(e.errno)
""#,
    );
    let v: Vec<u64> = seeks
        .split_whitespace()
        .map(|w| w.parse().unwrap())
        .collect();
    assert_eq!(v[0], 0, "a hole at the start: {seeks}");
    assert!(
        v[1] > size - (64 << 10) && v[1] < size,
        "data only at the end: {seeks}"
    );
    assert_eq!(v[2], size, "no hole after the data but the end: {seeks}");
    assert_eq!(v[3], libc::ENXIO as u64, "{seeks}");
    let copy = s.home.path().join("copy.img");
    common::sh_in(
        s.home.path(),
        &format!("cp --sparse=auto '{}' '{}'", img.display(), copy.display()),
    );
    let md = std::fs::metadata(&copy).unwrap();
    assert_eq!(md.len(), size);
    assert!(
        md.blocks() * 512 < 1 << 20,
        "copied dense: {} blocks",
        md.blocks()
    );
    let mut tail = [0u8; 8];
    std::os::unix::fs::FileExt::read_exact_at(
        &std::fs::File::open(&copy).unwrap(),
        &mut tail,
        size - 8,
    )
    .unwrap();
    assert_eq!(&tail, b"\0\0\0\0tail");
    s.ok(&["unmount", mp.to_str().unwrap()]);
    s.unmount();
}

/// A database of the past opens in the read-only view with the rows it had then: the view
/// gives SQLite the empty `-shm` (never versioned) and, once a checkpoint removed the log, the
/// empty `-wal` it needs beside a WAL database, which it cannot create there. The stand-ins
/// exist only where SQLite needs them, and refuse writes like everything in the view.
#[test]
fn a_past_sqlite_database_opens_in_the_view_with_the_rows_it_had() {
    let s = Sandbox::new();
    s.mount();
    let insert = |n: u32, close: bool| {
        s.sh(&format!(
            r#"python3 - <<'PY'
import os, sqlite3
c = sqlite3.connect("agent.sqlite")
c.execute("PRAGMA journal_mode=WAL")
c.execute("CREATE TABLE IF NOT EXISTS t (v)")
for i in range({n}):
    c.execute("INSERT INTO t VALUES (?)", (i,)); c.commit()
if {close}:
    c.close()
else:
    os._exit(0)  # still open, as a running gateway holds it: the log stays
PY"#,
            close = if close { "True" } else { "False" }
        ));
    };
    insert(10, false);
    let with_log = s.settle();
    assert!(s.path("agent.sqlite-wal").exists());
    insert(15, true);
    let checkpointed = s.settle();
    assert!(!s.path("agent.sqlite-wal").exists());

    let mp = s.home.path().join("view");
    browse(&s, &mp, None);
    let _view = common::LazyUnmount(&mp);
    for (seq, rows) in [(with_log, "10"), (checkpointed, "25")] {
        let dir = mp.join(format!("at/{seq}"));
        let out = common::sh_in(
            &dir,
            "sqlite3 agent.sqlite 'PRAGMA integrity_check; SELECT count(*) FROM t'",
        );
        assert_eq!(out.split_whitespace().collect::<Vec<_>>(), ["ok", rows]);
        let out = common::sh_in(
            &dir,
            r#"python3 -c "
import sqlite3
c = sqlite3.connect('file:agent.sqlite?mode=ro', uri=True)
print(c.execute('SELECT count(*) FROM t').fetchone()[0])""#,
        );
        assert_eq!(out.trim(), rows);
    }
    // Listed beside a log; looked up beside a WAL database without one; nowhere else.
    let names = |seq: u64| {
        let mut v: Vec<String> = std::fs::read_dir(mp.join(format!("at/{seq}")))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        v.sort();
        v
    };
    assert_eq!(
        names(with_log),
        ["agent.sqlite", "agent.sqlite-shm", "agent.sqlite-wal"]
    );
    assert_eq!(names(checkpointed), ["agent.sqlite"]);
    let at = mp.join(format!("at/{checkpointed}"));
    for stand_in in ["agent.sqlite-wal", "agent.sqlite-shm"] {
        assert_eq!(std::fs::metadata(at.join(stand_in)).unwrap().len(), 0);
        let err = std::fs::OpenOptions::new()
            .write(true)
            .open(at.join(stand_in))
            .unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::EROFS), "{stand_in}");
    }
    assert!(!mp.join(format!("at/{with_log}/other.sqlite-shm")).exists());
    assert!(!at.join("agent.sqlite-journal").exists());
    s.ok(&["unmount", mp.to_str().unwrap()]);
    s.unmount();
}
