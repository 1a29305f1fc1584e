//! End-to-end CLI tests: the real binary, a real mount, OpenClaw's real write patterns.

mod common;

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;

use common::Sandbox;
use serde_json::Value;

/// Writes `openclaw.json` the way OpenClaw does: lock file, temp file, `.bak` ring rotated by
/// renames, rename over, then checks `(st_dev, st_ino)` and `st_nlink`.
fn openclaw_config_write(s: &Sandbox, body: &str) {
    s.sh(&format!(
        r#"python3 - <<'PY'
import os
lock = "openclaw.json.lock"
fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
tmp = "openclaw.json.tmp.%d" % os.getpid()
with open(tmp, "w") as f:
    f.write({body:?})
    f.flush(); os.fsync(f.fileno())
    st = os.fstat(f.fileno())
    for i in range(4, 0, -1):
        src = "openclaw.json.bak" + ("" if i == 1 else ".%d" % (i - 1))
        if os.path.exists(src):
            os.rename(src, "openclaw.json.bak.%d" % i)
    if os.path.exists("openclaw.json"):
        os.rename("openclaw.json", "openclaw.json.bak")
    os.rename(tmp, "openclaw.json")
    d = os.lstat("openclaw.json")
    assert (d.st_dev, d.st_ino) == (st.st_dev, st.st_ino), "inode changed across rename"
    assert d.st_nlink == 1, d.st_nlink
os.close(fd); os.unlink(lock)
PY"#
    ));
}

/// Publishes a workspace Markdown file with `link(tmp, dest)` + unlink, as OpenClaw does.
fn link_publish(s: &Sandbox, dest: &str, body: &str) {
    let tmp = s.path(&format!("{dest}.tmp"));
    std::fs::write(&tmp, body).unwrap();
    let _ = std::fs::remove_file(s.path(dest));
    std::fs::hard_link(&tmp, s.path(dest)).unwrap();
    std::fs::remove_file(&tmp).unwrap();
}

/// The safety mark a rollback's output names for undoing it.
fn undo_mark(out: &str) -> String {
    out.lines()
        .find_map(|l| l.strip_prefix("undo with: clawfs rollback --to "))
        .unwrap()
        .trim_end_matches(" --yes")
        .to_string()
}

fn paths(v: &[Value]) -> Vec<(String, String)> {
    v.iter()
        .map(|a| {
            (
                a["action"]
                    .as_str()
                    .or(a["change"].as_str())
                    .unwrap()
                    .to_string(),
                a["path"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

#[test]
fn openclaw_write_patterns_are_versioned_and_rolled_back() {
    let s = Sandbox::new();
    std::fs::create_dir_all(s.path("workspace")).unwrap();
    s.mount();
    openclaw_config_write(&s, "{\"v\": 1}\n");
    link_publish(&s, "workspace/MEMORY.md", "# Memory\nfirst\n");
    let first = s.settle();
    openclaw_config_write(&s, "{\"v\": 2}\n");
    link_publish(&s, "workspace/MEMORY.md", "# Memory\nsecond\n");
    s.settle();

    // History of the destination shows the rename-over and link writes.
    let h = s.json(&["history", "openclaw.json"]);
    assert!(h.len() >= 2, "{h:?}");
    assert_eq!(h[0]["op"], "rename-from");
    let h = s.json(&["history", "workspace/MEMORY.md"]);
    assert!(h.iter().any(|e| e["op"] == "link"), "{h:?}");
    // cat --at with a sequence number and with a version id.
    assert_eq!(
        s.ok(&["cat", "openclaw.json", "--at", &first.to_string()]),
        "{\"v\": 1}\n"
    );
    let vid = h.last().unwrap()["version"].as_str().unwrap().to_string();
    assert_eq!(
        s.ok(&["cat", "workspace/MEMORY.md", "--at", &vid]),
        "# Memory\nfirst\n"
    );
    // The .bak ring is versioned too, and the lock file is not.
    let changed = paths(&s.json(&["diff", "--from", &first.to_string()]));
    assert!(
        changed.contains(&("created".into(), "openclaw.json.bak".into())),
        "{changed:?}"
    );
    assert!(
        !changed.iter().any(|(_, p)| p.ends_with(".lock")),
        "{changed:?}"
    );
    // A path that names nothing then or now is an error, not "no differences"; a moment given
    // where `--from` was meant is told so.
    let err = s.fails(&["diff", &first.to_string()]);
    assert!(
        err.contains(&format!("{first} exists neither at #"))
            && err.contains(&format!("use `--from {first}`")),
        "{err}"
    );
    let err = s.fails(&["diff", "--from", &first.to_string(), "workspace/MEMROY.md"]);
    assert!(
        err.contains(&format!(
            "workspace/MEMROY.md exists neither at #{first} nor at #"
        )) && err.contains("clawfs history workspace/MEMROY.md"),
        "{err}"
    );
    // A path that exists at only one of the two is a difference like any other.
    let changed = paths(&s.json(&["diff", "--from", &first.to_string(), "openclaw.json.bak"]));
    assert_eq!(
        changed,
        vec![("created".to_string(), "openclaw.json.bak".to_string())]
    );

    // Preview shows exactly what would change, and changes nothing.
    let plan = s.json(&["rollback", "--to", &first.to_string(), "--preview"]);
    let actions = paths(plan[0]["actions"].as_array().unwrap());
    assert_eq!(
        actions,
        vec![
            ("remove".to_string(), "openclaw.json.bak".to_string()),
            ("restore".to_string(), "openclaw.json".to_string()),
            ("restore".to_string(), "workspace/MEMORY.md".to_string()),
        ]
    );
    assert_eq!(s.read("openclaw.json"), b"{\"v\": 2}\n");

    // One file.
    let out = s.ok(&[
        "rollback",
        "--to",
        &first.to_string(),
        "workspace/MEMORY.md",
        "--yes",
    ]);
    assert!(
        out.contains("undo with: clawfs rollback --to safety-"),
        "{out}"
    );
    assert_eq!(s.read("workspace/MEMORY.md"), b"# Memory\nfirst\n");
    assert_eq!(s.read("openclaw.json"), b"{\"v\": 2}\n");
    // The whole tree, then undo through the safety mark.
    let out = s.ok(&["rollback", "--to", &first.to_string(), "--yes"]);
    assert_eq!(s.read("openclaw.json"), b"{\"v\": 1}\n");
    assert!(!s.path("openclaw.json.bak").exists());
    let safety = undo_mark(&out);
    s.ok(&["rollback", "--to", &safety, "--yes"]);
    assert_eq!(s.read("openclaw.json"), b"{\"v\": 2}\n");
    assert!(s.path("openclaw.json.bak").exists());
    assert_eq!(s.read("workspace/MEMORY.md"), b"# Memory\nfirst\n");
}

#[test]
fn delete_memory_md_and_get_it_back() {
    let s = Sandbox::new();
    s.write("workspace/MEMORY.md", b"remember the milk\n");
    s.mount();
    let before = s.head().to_string();
    std::fs::remove_file(s.path("workspace/MEMORY.md")).unwrap();
    s.settle();
    let h = s.json(&["history", "workspace/MEMORY.md"]);
    assert_eq!(h[0]["op"], "delete");
    assert!(!s.path("workspace/MEMORY.md").exists());
    // A misspelt path is an error, not "nothing to do", and changes nothing.
    let head = s.head();
    for args in [&["--preview"][..], &["--yes"][..]] {
        let err = s.fails(
            &[
                &["rollback", "--to", &before, "workspace/MEMROY.md"][..],
                args,
            ]
            .concat(),
        );
        assert!(
            err.contains("workspace/MEMROY.md exists neither at #") && err.contains("nor now"),
            "{err}"
        );
    }
    assert_eq!(s.head(), head);
    assert!(!s.path("workspace/MEMORY.md").exists());
    s.ok(&["rollback", "--to", &before, "workspace/MEMORY.md", "--yes"]);
    assert_eq!(s.read("workspace/MEMORY.md"), b"remember the milk\n");
}

/// A file whose name takes all of a name's 255 bytes (multi-byte characters, so the temp name
/// beside it is cut at a character) rolls back like any other, mounted and unmounted: the
/// rollback's temp file beside it must fit in a name too.
#[test]
fn a_file_with_the_longest_name_rolls_back() {
    let s = Sandbox::new();
    let name = format!("notes/{}x", "é".repeat(127));
    assert_eq!(name.len() - "notes/".len(), 255);
    s.write(&name, b"first\n");
    s.mount();
    let first = s.head().to_string();
    s.write(&name, b"second\n");
    let second = s.settle().to_string();
    s.ok(&["rollback", "--to", &first, &name, "--yes"]);
    assert_eq!(s.read(&name), b"first\n");
    s.assert_newest_is_the_file(&name);
    s.unmount();
    s.ok(&["rollback", "--to", &second, &name, "--yes"]);
    assert_eq!(s.read(&name), b"second\n");
    let left = std::fs::read_dir(s.path("notes")).unwrap().count();
    assert_eq!(left, 1, "only the file, no temp file beside it");
}

/// A name holding a newline or an escape sequence (a skill could write one) is quoted in text
/// output, with those escaped, so it neither splits a listing into false lines nor drives the
/// terminal; JSON carries it as it is, and commands take it as it is. A mark's name can hold
/// no control character.
#[test]
fn names_with_control_characters_are_quoted_in_text_output() {
    let s = Sandbox::new();
    let odd = "skills/evil\nwrite       SOUL.md\u{1b}[2J";
    s.write("SOUL.md", b"calm\n");
    s.mount();
    let before = s.head().to_string();
    s.write(odd, b"payload\n");
    s.settle();
    let quoted = "\"skills/evil\\nwrite       SOUL.md\\u{1b}[2J\"";
    for args in [
        &["log"][..],
        &["diff", "--from", &before],
        &["rollback", "--to", &before, "--preview"],
    ] {
        let out = s.ok(args);
        assert!(out.contains(quoted), "{args:?}: {out}");
        assert!(!out.contains('\u{1b}'), "{args:?}: {out}");
        assert!(
            !out.lines().any(|l| l.starts_with("write       SOUL.md")),
            "{args:?}: {out}"
        );
    }
    let log = s.json(&["log"]);
    assert!(log.iter().any(|m| m["paths"]
        .as_array()
        .unwrap()
        .iter()
        .any(|c| c["path"] == odd)));
    assert_eq!(s.ok(&["cat", odd]), "payload\n");
    s.ok(&["rollback", "--to", &before, odd, "--yes"]);
    assert!(!s.path(odd).exists());
    let err = s.fails(&["mark", "a\nb"]);
    assert!(err.contains("not a valid mark name"), "{err}");
    let marks = s.json(&["marks"]);
    assert!(marks.iter().all(|m| m["name"] != "a\nb"), "{marks:?}");
    assert!(marks
        .iter()
        .any(|m| m["name"].as_str().unwrap().starts_with("safety-")));
}

/// `history` is the history of a path; `--follow` also goes back through the renames that
/// brought the file there, each version with the name it had, and stops on a file renamed back
/// and forth. `log` shows a rename as one line, and `diff` as a rename (with its patch).
#[test]
fn history_follows_renames_back_and_log_and_diff_show_them_as_renames() {
    let s = Sandbox::new();
    s.write("MEMORY.md", b"one\n");
    s.write("SOUL.md", b"calm\n");
    s.mount();
    let start = s.head().to_string();
    let fs = |from: &str, to: &str| {
        std::fs::rename(s.path(from), s.path(to)).unwrap();
        s.settle();
    };
    fs("MEMORY.md", "notes.md");
    std::fs::write(s.path("notes.md"), b"one\ntwo\n").unwrap();
    s.settle();
    std::fs::create_dir(s.path("memory")).unwrap();
    fs("notes.md", "memory/2026-11.md");

    let plain = s.json(&["history", "memory/2026-11.md"]);
    assert_eq!(plain.len(), 1, "{plain:?}");
    let followed = s.json(&["history", "--follow", "memory/2026-11.md"]);
    let seen: Vec<(&str, &str)> = followed
        .iter()
        .map(|v| (v["path"].as_str().unwrap(), v["op"].as_str().unwrap()))
        .collect();
    assert_eq!(
        seen,
        [
            ("memory/2026-11.md", "rename-from"),
            ("notes.md", "write"),
            ("notes.md", "rename-from"),
            ("MEMORY.md", "create"),
        ]
    );
    // The oldest version, found under its first name, reads back by its id.
    let first = followed[3]["version"].as_str().unwrap();
    assert_eq!(s.ok(&["cat", "MEMORY.md", "--at", first]), "one\n");
    let text = s.ok(&["history", "--follow", "memory/2026-11.md"]);
    assert!(
        text.lines().nth(3).unwrap().ends_with("as MEMORY.md"),
        "{text}"
    );

    let log = s.ok(&["log", "--limit", "3"]);
    assert!(
        log.contains("rename      notes.md -> memory/2026-11.md"),
        "{log}"
    );
    assert!(log.contains("rename      MEMORY.md -> notes.md"), "{log}");
    assert!(!log.contains("rename-to"), "{log}");

    std::fs::rename(s.path("SOUL.md"), s.path("memory/SOUL.md")).unwrap();
    s.settle();
    let diff = s.json(&["diff", "--from", &start]);
    let renamed: Vec<_> = diff.iter().filter(|e| e["change"] == "renamed").collect();
    assert_eq!(renamed.len(), 2, "{diff:?}");
    assert_eq!(renamed[0]["path"], "memory/2026-11.md");
    assert_eq!(renamed[0]["from"], "MEMORY.md");
    assert_eq!(renamed[0]["same"], false);
    assert_eq!(renamed[1]["path"], "memory/SOUL.md");
    assert_eq!(renamed[1]["same"], true);
    assert!(!diff.iter().any(|e| e["change"] == "deleted"), "{diff:?}");
    let text = s.ok(&["diff", "--from", &start, "--patch"]);
    assert!(
        text.contains("R MEMORY.md -> memory/2026-11.md  (4 B -> 8 B)"),
        "{text}"
    );
    assert!(
        text.contains("R SOUL.md -> memory/SOUL.md  (5 B -> 5 B)"),
        "{text}"
    );
    assert!(
        text.contains("--- a/MEMORY.md\n+++ b/memory/2026-11.md\n@@ -1 +1,2 @@\n one\n+two\n"),
        "{text}"
    );
    assert!(
        !text.contains("a/SOUL.md"),
        "an unchanged rename has no patch: {text}"
    );

    // Back and forth: each version once, and the command ends.
    fs("memory/2026-11.md", "MEMORY.md");
    fs("MEMORY.md", "memory/2026-11.md");
    let twice = s.json(&["history", "--follow", "memory/2026-11.md"]);
    let seqs: Vec<u64> = twice.iter().map(|v| v["seq"].as_u64().unwrap()).collect();
    let mut unique = seqs.clone();
    unique.dedup();
    assert_eq!(seqs, unique, "{twice:?}");
    assert_eq!(twice.last().unwrap()["op"], "create", "{twice:?}");
}

/// A rollback replaces a file by renaming the old content into place, as an editor would: a
/// process holding the file open keeps the replaced inode and sees it unlinked at once (SQLite
/// checks `st_nlink` to warn of a database replaced under it), even though the kernel caches
/// attributes.
#[test]
fn a_file_held_open_across_a_rollback_shows_it_was_replaced() {
    use std::os::unix::fs::MetadataExt;
    let s = Sandbox::new();
    s.write("workspace/SOUL.md", b"calm\n");
    s.mount();
    let before = s.head().to_string();
    s.write("workspace/SOUL.md", b"reckless\n");
    s.settle();
    let held = std::fs::File::open(s.path("workspace/SOUL.md")).unwrap();
    let old_ino = held.metadata().unwrap().ino();
    assert_eq!(held.metadata().unwrap().nlink(), 1);
    s.ok(&["rollback", "--to", &before, "workspace/SOUL.md", "--yes"]);
    assert_eq!(held.metadata().unwrap().nlink(), 0);
    let now = std::fs::metadata(s.path("workspace/SOUL.md")).unwrap();
    assert_ne!(now.ino(), old_ino);
    assert_eq!(s.read("workspace/SOUL.md"), b"calm\n");
}

/// Watches the given paths with inotify from a separate process until its stdin closes;
/// returns what it saw, one `(watched path, name, mask)` per event.
struct Watcher {
    child: std::process::Child,
}

impl Watcher {
    fn start(paths: &[std::path::PathBuf]) -> Watcher {
        use std::io::BufRead;
        let mut child = std::process::Command::new("python3")
            .arg("-c")
            .arg(
                r#"
import ctypes, os, select, struct, sys
libc = ctypes.CDLL(None, use_errno=True)
fd = libc.inotify_init1(os.O_NONBLOCK)
watched = {}
for p in sys.argv[1:]:
    wd = libc.inotify_add_watch(fd, p.encode(), 0xfff)
    assert wd >= 0, (p, ctypes.get_errno())
    watched[wd] = p
print("ready", flush=True)
def drain():
    try:
        buf = os.read(fd, 1 << 16)
    except BlockingIOError:
        return False
    i = 0
    while i < len(buf):
        wd, mask, _, n = struct.unpack_from("iIII", buf, i)
        name = buf[i + 16:i + 16 + n].rstrip(b"\0").decode()
        print("%s\t%s\t%d" % (watched.get(wd, "?"), name, mask), flush=True)
        i += 16 + n
    return True
while True:
    r, _, _ = select.select([fd, sys.stdin], [], [])
    if fd in r:
        drain()
    if sys.stdin in r and not sys.stdin.read(1):
        while drain():
            pass
        break
"#,
            )
            .args(paths)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.as_mut().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert_eq!(line, "ready\n");
        Watcher { child }
    }

    fn events(mut self) -> Vec<(String, String, u32)> {
        // Events for what was done before this are queued already.
        drop(self.child.stdin.take());
        let out = self.child.wait_with_output().unwrap();
        assert!(out.status.success());
        String::from_utf8(out.stdout)
            .unwrap()
            .lines()
            .map(|l| {
                let f: Vec<&str> = l.split('\t').collect();
                (f[0].to_string(), f[1].to_string(), f[2].parse().unwrap())
            })
            .collect()
    }
}

/// Programs watching the tree are told what a rollback changes, as if a program had made the
/// changes through the mount: OpenClaw reloads its config, and its skills and memory, when
/// inotify says they changed (chokidar). The rollback is still one moment of `restore`
/// versions, and leaves no temp file behind.
#[test]
fn programs_watching_the_tree_see_what_a_rollback_changes() {
    const IN_ATTRIB: u32 = 0x4;
    const IN_MOVED_TO: u32 = 0x80;
    const IN_CREATE: u32 = 0x100;
    const IN_DELETE: u32 = 0x200;
    const IN_DELETE_SELF: u32 = 0x400;
    let s = Sandbox::new();
    s.write("openclaw.json", b"{\"gateway\":{\"port\":18789}}\n");
    s.write("workspace/MEMORY.md", b"remember the milk\n");
    s.write("workspace/notes/monday.md", b"standup\n");
    s.write("skills/weather/SKILL.md", b"# weather\n");
    s.mount();
    let before = s.head().to_string();
    s.write("openclaw.json", b"{\"gateway\":{\"port\":\"broken\"\n");
    std::fs::remove_file(s.path("workspace/MEMORY.md")).unwrap();
    std::fs::remove_dir_all(s.path("workspace/notes")).unwrap();
    s.write("skills/evil/SKILL.md", b"# exfiltrate\n");
    let changed = s.settle();

    let watcher = Watcher::start(&[
        s.dir.clone(),
        s.path("openclaw.json"),
        s.path("workspace"),
        s.path("skills"),
        s.path("skills/evil"),
    ]);
    s.ok(&["rollback", "--to", &before, "--yes"]);
    let events = watcher.events();
    let saw = |dir: &std::path::Path, name: &str, mask: u32| {
        let dir = dir.to_str().unwrap();
        events
            .iter()
            .any(|(d, n, m)| d == dir && n == name && m & mask == mask)
    };
    assert!(saw(&s.dir, "openclaw.json", IN_MOVED_TO), "{events:?}");
    let config = s.path("openclaw.json");
    assert!(
        saw(&config, "", IN_ATTRIB) || saw(&config, "", IN_DELETE_SELF),
        "the replaced config's own watch was not told: {events:?}"
    );
    assert!(
        saw(&s.path("workspace"), "MEMORY.md", IN_MOVED_TO),
        "{events:?}"
    );
    assert!(saw(&s.path("workspace"), "notes", IN_CREATE), "{events:?}");
    assert!(
        saw(&s.path("skills/evil"), "SKILL.md", IN_DELETE),
        "{events:?}"
    );
    assert!(saw(&s.path("skills"), "evil", IN_DELETE), "{events:?}");

    assert_eq!(s.read("openclaw.json"), b"{\"gateway\":{\"port\":18789}}\n");
    assert_eq!(s.read("workspace/MEMORY.md"), b"remember the milk\n");
    assert_eq!(s.read("workspace/notes/monday.md"), b"standup\n");
    assert!(!s.path("skills/evil").exists());
    let leftovers = s.sh("find . -name '*clawfs-restore*'");
    assert!(leftovers.is_empty(), "temp files left: {leftovers}");
    // One moment, of restores and removals only: the renames and removals the rollback made
    // through the mount are not recorded a second time.
    assert_eq!(s.head(), changed + 1);
    let log = s.json(&["log", "--limit", "1"]);
    let ops: Vec<&str> = log[0]["paths"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["op"].as_str().unwrap())
        .collect();
    assert!(
        ops.iter()
            .all(|op| ["restore", "delete", "create"].contains(op)),
        "{ops:?}"
    );
    // A restored file is one change, naming the moment it came from (not a deletion too).
    let config: Vec<&Value> = log[0]["paths"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["path"] == "openclaw.json")
        .collect();
    assert_eq!(config.len(), 1, "{config:?}");
    assert_eq!(config[0]["op"], "restore");
    assert_eq!(config[0]["other"], format!("#{before}"));
    assert_eq!(log[0]["changes"], log[0]["paths"].as_array().unwrap().len());
    for rel in [
        "openclaw.json",
        "workspace/MEMORY.md",
        "workspace/notes/monday.md",
    ] {
        s.assert_newest_is_the_file(rel);
    }
}

/// A shell writes a file with `>`: it opens with `O_CREAT | O_TRUNC` and closes a duplicate of
/// the descriptor before the command writes. Each such write is one version holding the new
/// content, with no empty one before it; an intended truncation (`: > f`) is still one.
#[test]
fn a_shell_redirect_is_one_version_with_its_content() {
    let s = Sandbox::new();
    s.write("workspace/SOUL.md", b"calm\n");
    s.mount();
    s.sh("echo reckless > workspace/SOUL.md; echo new > workspace/NEW.md; : > workspace/SOUL.md");
    s.settle();
    let sizes = |p: &str| -> Vec<u64> {
        s.json(&["history", p])
            .iter()
            .map(|v| v["size"].as_u64().unwrap())
            .collect()
    };
    // Newest first.
    assert_eq!(sizes("workspace/SOUL.md"), [0, 9, 5]);
    assert_eq!(sizes("workspace/NEW.md"), [4]);
}

#[test]
fn sqlite_rolled_back_to_a_time_opens_with_the_earlier_rows() {
    let s = Sandbox::new();
    s.mount();
    let insert = |from: u32, to: u32| {
        s.sh(&format!(
            "python3 -c \"
import sqlite3, os
os.makedirs('state', exist_ok=True)
c = sqlite3.connect('state/openclaw.sqlite')
c.execute('PRAGMA journal_mode=WAL'); c.execute('PRAGMA synchronous=NORMAL')
c.execute('CREATE TABLE IF NOT EXISTS t (id INTEGER PRIMARY KEY)')
for i in range({from}, {to}):
    c.execute('INSERT INTO t VALUES (?)', (i,)); c.commit()
c.close()\""
        ))
    };
    insert(0, 300);
    s.settle();
    let then = jiff::Timestamp::now().to_string();
    std::thread::sleep(std::time::Duration::from_millis(200));
    // A live reader keeps the WAL around.
    insert(300, 600);
    s.settle();
    s.ok(&["rollback", "--to", &then, "state/openclaw.sqlite", "--yes"]);
    let out = s.sh(
        "sqlite3 state/openclaw.sqlite 'PRAGMA integrity_check; select count(*), max(id) from t;'",
    );
    assert_eq!(out.trim(), "ok\n300|299");
}

/// A rollback that cannot take a step stops there and says so: the steps before it are done
/// and recorded as one moment, the error names the path and how to undo, and the files that
/// stood in the way are untouched. Here a file comes back where a directory now holds a file
/// that is not versioned, which a rollback never removes.
#[test]
fn a_rollback_stopped_half_way_says_what_it_did_and_how_to_undo_it() {
    let s = Sandbox::new();
    s.write("notes", b"a file, then\n");
    s.write("AGENTS.md", b"calm\n");
    s.mount();
    let before = s.head().to_string();
    std::fs::remove_file(s.path("notes")).unwrap();
    s.write("notes/today.md", b"now a directory\n");
    s.write("notes/editor.lock", b"not versioned\n");
    s.write("AGENTS.md", b"reckless\n");
    let changed = s.settle();

    let err = s.fails(&["rollback", "--to", &before, "--yes"]);
    assert!(err.contains("restoring notes"), "{err}");
    assert!(err.contains("path(s) before it were rolled back"), "{err}");
    assert_eq!(
        err.matches("Directory not empty").count(),
        1,
        "the cause, said once: {err}"
    );
    let safety = format!("safety-{changed}");
    assert!(
        err.contains(&format!("undo with `clawfs rollback --to {safety}`")),
        "{err}"
    );
    // What stood in the way is untouched; what came before it in the plan is done.
    assert_eq!(s.read("notes/editor.lock"), b"not versioned\n");
    assert!(!s.path("notes/today.md").exists());
    assert_eq!(s.read("AGENTS.md"), b"calm\n");
    assert_eq!(s.head(), changed + 1);
    s.assert_newest_is_the_file("AGENTS.md");
    // And the undo puts back everything it did.
    s.ok(&["rollback", "--to", &safety, "--yes"]);
    assert_eq!(s.read("notes/today.md"), b"now a directory\n");
    assert_eq!(s.read("AGENTS.md"), b"reckless\n");
}

#[test]
fn rollback_refuses_while_a_writer_holds_the_file() {
    let s = Sandbox::new();
    s.write("state/db.sqlite", b"v1");
    s.mount();
    let seq = s.head();
    std::fs::write(s.path("state/db.sqlite"), b"v2").unwrap();
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .custom_flags(0)
        .open(s.path("state/db.sqlite"))
        .unwrap();
    f.write_all(b"+").unwrap();
    s.settle();
    let err = s.fails(&["rollback", "--to", &seq.to_string(), "--yes"]);
    assert!(
        err.contains("refusing") && err.contains("state/db.sqlite") && err.contains("pid"),
        "{err}"
    );
    assert_eq!(s.read("state/db.sqlite"), b"v2+");
    s.ok(&["rollback", "--to", &seq.to_string(), "--yes", "--force"]);
    assert_eq!(s.read("state/db.sqlite"), b"v1");
    drop(f);
}

#[test]
fn offline_commands_work_after_unmount_and_capture_offline_edits() {
    let s = Sandbox::new();
    s.write("SOUL.md", b"calm\n");
    s.mount();
    std::fs::write(s.path("SOUL.md"), b"angry\n").unwrap();
    s.settle();
    s.ok(&["mark", "angry"]);
    s.unmount();
    // Edited while unmounted: a rollback first captures it, so it can be got back.
    std::fs::write(s.path("SOUL.md"), b"edited offline\n").unwrap();
    assert_eq!(s.ok(&["cat", "SOUL.md", "--at", "angry"]), "angry\n");
    let out = s.ok(&["rollback", "--to", "1", "--yes"]);
    assert_eq!(s.read("SOUL.md"), b"calm\n");
    let safety = undo_mark(&out);
    s.ok(&["rollback", "--to", &safety, "--yes"]);
    assert_eq!(s.read("SOUL.md"), b"edited offline\n");
    let log = s.json(&["log"]);
    assert!(log
        .iter()
        .all(|e| e["seq"].is_u64() && e["time"].is_string()));
    let marks = s.json(&["marks"]);
    assert!(marks.iter().any(|m| m["name"] == "angry"));
    s.ok(&["unmark", "angry"]);
    let err = s.fails(&["cat", "SOUL.md", "--at", "angry"]);
    assert!(err.contains("not a moment"), "{err}");
}

/// A mount scans the real tree for what changed while unmounted, and a rollback rescans it
/// first: neither may give an unchanged file a version (a phantom "write" in its history, and a
/// catalogue record per file per mount).
#[test]
fn a_remount_or_a_rollback_gives_unchanged_files_no_version() {
    let s = Sandbox::new();
    s.write("SOUL.md", b"calm\n");
    s.write("memory/notes.md", b"one\n");
    std::os::unix::fs::symlink("SOUL.md", s.path("soul-link")).unwrap();
    s.mount();
    std::fs::write(s.path("SOUL.md"), b"angry\n").unwrap();
    s.settle();
    s.unmount();
    let versions = |path: &str| s.json(&["history", path]).len();
    let (log, soul, notes) = (
        s.json(&["log"]).len(),
        versions("SOUL.md"),
        versions("memory/notes.md"),
    );
    assert_eq!((soul, notes), (2, 1));
    s.mount();
    s.settle();
    assert_eq!(
        s.json(&["log"]).len(),
        log,
        "a remount with nothing changed is no moment"
    );
    assert_eq!(versions("SOUL.md"), soul);
    assert_eq!(versions("memory/notes.md"), notes);
    s.unmount();
    // Edited while unmounted: that file alone gets a version at the next mount.
    std::fs::write(s.path("memory/notes.md"), b"two\n").unwrap();
    s.mount();
    s.settle();
    assert_eq!(versions("memory/notes.md"), notes + 1);
    assert_eq!(versions("SOUL.md"), soul);
    assert_eq!(s.json(&["log"]).len(), log + 1);
    // A rollback of one file gives the others no version either.
    s.ok(&["rollback", "SOUL.md", "--to", "1", "--yes"]);
    assert_eq!(s.read("SOUL.md"), b"calm\n");
    assert_eq!(versions("SOUL.md"), soul + 1);
    assert_eq!(versions("memory/notes.md"), notes + 1);
    s.unmount();
}

#[test]
fn every_moment_form_resolves_and_bad_ones_are_clear() {
    let s = Sandbox::new();
    s.write("a.md", b"one\n");
    s.mount();
    s.ok(&["mark", "m1", "-m", "first"]);
    std::fs::write(s.path("a.md"), b"two\n").unwrap();
    s.settle();
    let now = jiff::Timestamp::now();
    let local = now
        .to_zoned(jiff::tz::TimeZone::system())
        .strftime("%Y-%m-%d %H:%M:%S")
        .to_string();
    let clock = now
        .to_zoned(jiff::tz::TimeZone::system())
        .strftime("%H:%M:%S")
        .to_string();
    let today = format!("today {clock}");
    for when in [
        "now",
        "latest",
        "0s",
        "1s ago",
        "0 seconds ago",
        now.to_string().as_str(),
        local.as_str(),
        clock.as_str(),
        today.as_str(),
    ] {
        assert_eq!(s.ok(&["cat", "a.md", "--at", when]), "two\n", "{when}");
    }
    for when in ["1", "#1", "m1"] {
        assert_eq!(s.ok(&["cat", "a.md", "--at", when]), "one\n", "{when}");
    }
    let vid = s.json(&["history", "a.md"]).last().unwrap()["version"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(s.ok(&["cat", "a.md", "--at", &vid]), "one\n");
    assert!(s
        .fails(&["cat", "a.md", "--at", "2d"])
        .contains("no version exists"));
    assert!(s
        .fails(&["cat", "a.md", "--at", "2099-01-01 00:00"])
        .contains("in the future"));
    assert!(s
        .fails(&["cat", "a.md", "--at", "99999"])
        .contains("there is no moment"));
    assert!(s
        .fails(&["cat", "a.md", "--at", "2 days ago"])
        .contains("no version exists"));
    let vague = s.fails(&["cat", "a.md", "--at", "yesterday"]);
    assert!(
        vague.contains("not a moment") && vague.contains("\"10 minutes ago\""),
        "{vague}"
    );
    assert!(s
        .fails(&["cat", "a.md", "--at", "soonish"])
        .contains("not a moment"));
    let backwards = s.fails(&["log", "--since", "now", "--until", "1"]);
    assert!(
        backwards.contains("comes after --until's #1"),
        "{backwards}"
    );
    assert!(s.fails(&["cat", "/etc/passwd"]).contains("outside"));
    assert!(s.fails(&["cat", "../x"]).contains("outside"));
    assert!(s.fails(&["cat", "nope.md"]).contains("did not exist"));
    assert!(s.fails(&["mark", "m1"]).contains("exists already"));
    assert!(s.fails(&["unmark", "zzz"]).contains("no mark"));
    assert!(s.fails(&["rollback", "--to", "1"]).contains("--yes"));
}

/// Run inside a mounted tree that is not the default one, commands with no directory named act
/// on that tree (its own default store), not on `$OPENCLAW_STATE_DIR`; `-C` still wins.
#[test]
fn commands_inside_a_mounted_tree_act_on_it() {
    let s = Sandbox::new();
    let work = s.home.path().join("agent2");
    std::fs::create_dir_all(work.join("notes")).unwrap();
    let work = work.canonicalize().unwrap();
    // Like `Sandbox::cmd`, but with no --store: each tree finds its own default store.
    let clawfs = |cwd: &std::path::Path, args: &[&str]| {
        let out = std::process::Command::new(common::bin())
            .env("HOME", s.home.path())
            .env_remove("XDG_DATA_HOME")
            .env("OPENCLAW_STATE_DIR", &s.dir)
            .env("CLAWFS_LOG", "warn")
            .current_dir(cwd)
            .args(args)
            .stdin(std::process::Stdio::null())
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (ok, _, err) = clawfs(s.home.path(), &["mount", work.to_str().unwrap()]);
    assert!(ok, "{err}");
    let _mounted = common::LazyUnmount(&work);
    std::fs::write(work.join("notes/todo.md"), b"first\n").unwrap();
    std::fs::write(work.join("notes/todo.md"), b"second\n").unwrap();
    let inside = work.join("notes");
    let (ok, out, err) = clawfs(&inside, &["--json", "status"]);
    let status: Value = serde_json::from_str(out.trim()).unwrap_or_else(|_| panic!("{out}{err}"));
    assert!(ok && status["dir"] == work.to_str().unwrap(), "{out}{err}");
    assert_eq!(status["mounted"], true, "{out}");
    // A path relative to the current directory, inside the tree (both closes are committed
    // within a second).
    common::eventually("both versions of notes/todo.md in its history", || {
        let (ok, out, _) = clawfs(&inside, &["--json", "history", "todo.md"]);
        ok && out.lines().count() == 2
    });
    // Outside it, the default directory, which has no store yet.
    let (ok, _, err) = clawfs(s.home.path(), &["status"]);
    assert!(!ok && err.contains(".openclaw"), "{err}");
    // Named explicitly, the named one.
    let (ok, _, err) = clawfs(&inside, &["-C", s.dir.to_str().unwrap(), "log"]);
    assert!(!ok && err.contains("no clawfs store"), "{err}");
    // A tree mounted with a store of its own (`--store`) is found with that store by commands
    // that name neither: the mount names its store.
    s.mount();
    s.write("soul.md", b"x");
    let (ok, out, err) = clawfs(&s.dir, &["--json", "status"]);
    let status: Value = serde_json::from_str(out.trim()).unwrap_or_else(|_| panic!("{out}{err}"));
    assert!(
        ok && status["store"] == s.store.to_str().unwrap(),
        "{out}{err}"
    );
    let (ok, out, err) = clawfs(&inside, &["-C", s.dir.to_str().unwrap(), "log"]);
    assert!(ok && out.contains("soul.md"), "{out}{err}");
    let (ok, _, err) = clawfs(s.home.path(), &["unmount", s.dir.to_str().unwrap()]);
    assert!(ok && !s.is_mounted(), "{err}");
    let (ok, _, err) = clawfs(s.home.path(), &["unmount", work.to_str().unwrap()]);
    assert!(ok, "{err}");
}

#[test]
fn errors_without_a_store_or_daemon_are_clear() {
    let s = Sandbox::new();
    let err = s.fails(&["log"]);
    assert!(
        err.contains("no clawfs store") && err.contains("clawfs mount"),
        "{err}"
    );
    let err = s.fails(&["unmount", s.dir.to_str().unwrap()]);
    assert!(err.contains("not mounted"), "{err}");
}

#[test]
fn the_control_socket_is_owner_only_and_secrets_are_left_alone() {
    use std::os::unix::fs::PermissionsExt;
    let s = Sandbox::new();
    s.write("credentials/token", b"old-secret");
    s.write("agents/a/agent/auth-profiles.json", b"{\"old\":1}");
    s.write("note.md", b"old");
    s.mount();
    let mode = std::fs::metadata(s.store.join("control.sock"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    let seq = s.head();
    std::fs::write(s.path("credentials/token"), b"new-secret").unwrap();
    std::fs::write(s.path("agents/a/agent/auth-profiles.json"), b"{\"new\":1}").unwrap();
    std::fs::write(s.path("note.md"), b"new").unwrap();
    s.settle();
    let plan = s.json(&["rollback", "--to", &seq.to_string(), "--preview"]);
    assert_eq!(
        plan[0]["skipped_secrets"].as_array().unwrap().len(),
        2,
        "{plan:?}"
    );
    s.ok(&["rollback", "--to", &seq.to_string(), "--yes"]);
    assert_eq!(s.read("note.md"), b"old");
    assert_eq!(s.read("credentials/token"), b"new-secret");
    s.ok(&["rollback", "--to", &seq.to_string(), "credentials", "--yes"]);
    assert_eq!(s.read("credentials/token"), b"old-secret");
    s.ok(&[
        "rollback",
        "--to",
        &seq.to_string(),
        "--include-secrets",
        "--yes",
    ]);
    assert_eq!(s.read("agents/a/agent/auth-profiles.json"), b"{\"old\":1}");
}

#[test]
fn another_user_is_refused_at_the_socket_with_a_clear_message() {
    let s = Sandbox::new();
    s.mount();
    // The store's socket is 0600 and root's: `nobody` may not drive the daemon.
    let mut bin_copy = std::env::temp_dir().join(format!("clawfs-nobody-{}", std::process::id()));
    std::fs::copy(common::bin(), &bin_copy).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&bin_copy, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(s.home.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let out = std::process::Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(&bin_copy)
        .args([
            "--store",
            s.store.to_str().unwrap(),
            "-C",
            s.dir.to_str().unwrap(),
            "log",
        ])
        .env("HOME", "/tmp")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("permission denied") && err.lines().count() == 1,
        "{err}"
    );
    std::fs::remove_file(&mut bin_copy).ok();
}

/// A shell that was in the directory before the mount, and a program that opened a file for
/// writing then, reach the real files past the mount. `mount` names them, `status` lists them
/// for as long as they hold on, and the warning is true: what they write there is not
/// versioned. A process that came in through the mount, a file that is not versioned, and the
/// `clawfs` processes themselves are not named; the one that came in through the mount is
/// named by `unmount`, which it keeps busy.
#[test]
fn processes_holding_the_directory_are_named_by_mount_status_and_unmount() {
    use std::process::{Command, Stdio};
    let s = Sandbox::new();
    s.write("workspace/MEMORY.md", b"v1\n");
    s.write("tmp/scratch", b"");
    let holder = |script: &str| {
        Command::new("sh")
            .arg("-c")
            .arg(script)
            .current_dir(s.path("workspace"))
            .stdin(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let holds_fd =
        |pid: u32, fd: u32| std::path::Path::new(&format!("/proc/{pid}/fd/{fd}")).exists();
    let mut early = holder("exec 3>>MEMORY.md 4>>../tmp/scratch; read x; echo early >&3; read y");
    common::eventually("the early holder's descriptors", || holds_fd(early.id(), 4));
    // A `clawfs status` (once it execs) whose working directory is underneath too: it does not
    // name itself.
    let asker = Command::new("sh")
        .arg("-c")
        .arg(r#"read x; exec "$@""#)
        .arg("sh")
        .arg(common::bin())
        .arg("--store")
        .arg(&s.store)
        .args(["-C", s.dir.to_str().unwrap(), "--json", "status"])
        .current_dir(s.path("workspace"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();

    // `clawfs mount`, run from inside the directory too, does not name itself.
    let out = s
        .cmd()
        .args(["mount", s.dir.to_str().unwrap()])
        .current_dir(s.path("workspace"))
        .output()
        .unwrap();
    common::assert_ok(&out);
    let warning = String::from_utf8_lossy(&out.stderr);
    let e = early.id();
    for want in [
        format!("pid {e} sh, working directory workspace"),
        format!("pid {e} sh, writing workspace/MEMORY.md"),
        "not versioned".to_string(),
    ] {
        assert!(warning.contains(&want), "{want:?} missing from: {warning}");
    }
    assert!(!warning.contains("scratch"), "{warning}");
    let named = warning.lines().filter(|l| l.starts_with("warning:   pid"));
    assert_eq!(named.count(), 3, "{warning}");
    assert!(warning.contains(&format!(
        "pid {} sh, working directory workspace",
        asker.id()
    )));

    let mut late = holder("exec 3>>MEMORY.md; read x");
    common::eventually("the late holder's descriptor", || holds_fd(late.id(), 3));
    let held = |s: &Sandbox| -> Vec<(u64, String, String)> {
        let st = s.json(&["status"]);
        st[0]["underneath"]
            .as_array()
            .unwrap()
            .iter()
            .map(|u| {
                (
                    u["pid"].as_u64().unwrap(),
                    u["holds"].as_str().unwrap().to_string(),
                    u["path"].as_str().unwrap().to_string(),
                )
            })
            .collect()
    };
    let now = held(&s);
    let e = e as u64;
    assert!(
        now.contains(&(e, "cwd".into(), "workspace".into())),
        "{now:?}"
    );
    assert!(
        now.contains(&(e, "writing".into(), "workspace/MEMORY.md".into())),
        "{now:?}"
    );
    let a = asker.id() as u64;
    assert!(
        now.contains(&(a, "cwd".into(), "workspace".into())),
        "{now:?}"
    );
    assert!(now.iter().all(|(pid, ..)| [e, a].contains(pid)), "{now:?}");
    assert!(s.ok(&["status"]).contains("underneath  pid"));
    writeln!(asker.stdin.as_ref().unwrap()).unwrap();
    let asked = asker.wait_with_output().unwrap();
    common::assert_ok(&asked);
    let asked: Value = serde_json::from_slice(&asked.stdout).unwrap();
    let pids: Vec<u64> = asked["underneath"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["pid"].as_u64().unwrap())
        .collect();
    assert!(pids.contains(&e) && !pids.contains(&a), "{asked}");

    // What the early holder writes reaches the real file, unversioned, as said.
    let versions = s.json(&["history", "workspace/MEMORY.md"]).len();
    writeln!(early.stdin.as_ref().unwrap()).unwrap();
    common::eventually("the early write", || {
        s.read("workspace/MEMORY.md") == b"v1\nearly\n"
    });
    s.settle();
    assert_eq!(s.json(&["history", "workspace/MEMORY.md"]).len(), versions);

    early.kill().unwrap();
    early.wait().unwrap();
    assert_eq!(held(&s), vec![]);

    // The late holder keeps the mount busy: `unmount` names it, and the mount goes on.
    let d = s.dir.to_str().unwrap();
    let err = s.fails(&["unmount", d]);
    let l = late.id();
    for want in [
        format!("pid {l} sh, working directory workspace"),
        format!("pid {l} sh, writing workspace/MEMORY.md"),
    ] {
        assert!(err.contains(&want), "{want:?} missing from: {err}");
    }
    assert!(s.is_mounted());
    late.kill().unwrap();
    late.wait().unwrap();
    // Asked from inside the mount, `unmount` is not kept busy by its own working directory.
    let out = s
        .cmd()
        .args(["unmount", d])
        .current_dir(s.path("workspace"))
        .output()
        .unwrap();
    common::assert_ok(&out);
    assert!(!s.is_mounted());
}

/// Two files of one size and mtime (written in one tick of the kernel's coarse clock), then
/// exchanged while nothing is mounted: an offline mark and the next mount's scan capture the
/// exchange. Before, a scan took each for its own old version, as size, mtime and mode all
/// matched (found by `random_ops --threads 2 --offline`).
#[test]
fn files_alike_in_size_and_mtime_exchanged_while_unmounted_are_captured() {
    let s = Sandbox::new();
    s.write("a.md", &[b'A'; 5000]);
    s.write("b.md", &[b'B'; 5000]);
    let t = std::fs::metadata(s.path("a.md"))
        .unwrap()
        .modified()
        .unwrap();
    std::fs::File::options()
        .write(true)
        .open(s.path("b.md"))
        .unwrap()
        .set_modified(t)
        .unwrap();
    s.mount();
    // A moment well after the files last changed, so that only the exchange makes them new.
    std::thread::sleep(std::time::Duration::from_millis(1500));
    s.write("later.md", b"later\n");
    s.settle();
    s.unmount();
    let exchange = "python3 -c 'import ctypes; assert ctypes.CDLL(None).renameat2(-100, b\"a.md\", -100, b\"b.md\", 2) == 0'";
    s.sh(exchange);
    s.ok(&["mark", "exchanged"]);
    // Which letter the recorded file is made of (all 5,000 bytes alike).
    let letter = |args: &[&str]| {
        let body = s.ok(args);
        assert_eq!(body.len(), 5000);
        let first = body.chars().next().unwrap();
        assert!(body.chars().all(|c| c == first));
        first
    };
    assert_eq!(letter(&["cat", "a.md", "--at", "exchanged"]), 'B');
    assert_eq!(letter(&["cat", "b.md", "--at", "exchanged"]), 'A');
    std::thread::sleep(std::time::Duration::from_millis(1500));
    s.sh(exchange);
    s.mount();
    assert_eq!(letter(&["cat", "a.md"]), 'A');
    assert_eq!(letter(&["cat", "b.md"]), 'B');
    s.unmount();
}
