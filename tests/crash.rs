//! Crashes: the daemon killed mid write-storm, the directory a killed daemon leaves, and every
//! past moment of a live SQLite database.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{eventually, Sandbox};
#[allow(unused_imports)]
use std::io::Write;

fn daemon_pid(s: &Sandbox) -> u32 {
    let out = Command::new("pgrep")
        .args(["-f", &format!("mount --foreground {}", s.dir.display())])
        .output()
        .unwrap();
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .next()
        .expect("daemon running")
        .parse()
        .unwrap()
}

#[test]
fn kill_9_during_a_write_storm_loses_no_acknowledged_byte_twenty_times() {
    let s = Sandbox::new();
    // The real directory, reachable whatever is mounted over it.
    let real = std::fs::File::open(&s.dir).unwrap();
    let real_dir = format!("/proc/self/fd/{}", std::os::fd::AsRawFd::as_raw_fd(&real));
    for round in 0..20 {
        s.mount();
        // The writer appends numbered records and reports each one after write() returned.
        let mut writer = Command::new("python3")
            .arg("-u")
            .arg("-c")
            .arg(format!(
                r#"
import os, sys
fds = [os.open("{dir}/storm-%d.log" % i, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644) for i in range(3)]
n = 0
while True:
    rec = (("round {round} record %08d " % n).ljust(203, "x") + "\n").encode()
    try:
        w = os.write(fds[n % 3], rec)
    except OSError:
        break
    # A write the kernel split into several FUSE requests may come back short when the daemon
    # dies between them: only `w` bytes were acknowledged then.
    print(n, w, flush=True)
    if w != len(rec):
        break
    n += 1
"#,
                dir = s.dir.display()
            ))
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = writer.stdout.take().unwrap();
        let mut lines = BufReader::new(stdout).lines();
        // Let it run a little, then kill the daemon.
        for _ in 0..(200 + round * 37) {
            lines.next();
        }
        let pid = daemon_pid(&s);
        Command::new("kill")
            .args(["-9", &pid.to_string()])
            .status()
            .unwrap();
        let mut short = None;
        let acked: Vec<u64> = lines
            .map_while(Result::ok)
            .filter_map(|l| {
                let (n, w) = l.split_once(' ')?;
                let (n, w): (u64, usize) = (n.parse().ok()?, w.parse().ok()?);
                if w == 204 {
                    Some(n)
                } else {
                    short = Some((n, w));
                    None
                }
            })
            .collect();
        let _ = writer.wait();
        let last_now = acked.last().copied().unwrap_or(0);
        let f = format!("{real_dir}/storm-{}.log", last_now % 3);
        let text = std::fs::read_to_string(&f).unwrap();
        let rec = format!("round {round} record {last_now:08} ");
        let pos = text.find(&rec);
        let complete = pos.is_some_and(|p| text.len() >= p + 204);
        // A short write's acknowledged prefix is there too.
        if let Some((n, w)) = short {
            let text = std::fs::read_to_string(format!("{real_dir}/storm-{}.log", n % 3)).unwrap();
            let full = format!("{:x<203}\n", format!("round {round} record {n:08} "));
            assert!(
                text.contains(&full[..w]),
                "round {round}: the {w} acknowledged bytes of a short write were lost"
            );
        }
        if !complete {
            let keep = s.home.path().to_path_buf();
            std::mem::forget(s);
            panic!("round {round}: right after the kill, the real file lacks acknowledged record {last_now} (found at {pos:?}, file {} bytes); left {}", text.len(), keep.display());
        }
        // The mount goes away by itself (auto_unmount), or stays stale ("Transport endpoint is
        // not connected") if the watcher did not get to it: `clawfs mount` must cope with both.
        std::thread::sleep(Duration::from_millis(100 * (round % 3) as u64));
        s.mount();
        let last = acked.last().copied().unwrap_or(0);
        // Every acknowledged record is in the real files.
        let mut all = String::new();
        for i in 0..3 {
            all.push_str(&std::fs::read_to_string(s.path(&format!("storm-{i}.log"))).unwrap());
        }
        for n in [0, last / 2, last] {
            let rec = format!("round {round} record {n:08} ");
            if !all.contains(&rec) {
                let keep = s.home.path().to_path_buf();
                std::mem::forget(s);
                panic!(
                    "round {round}: acknowledged record {n} lost; left {} for inspection",
                    keep.display()
                );
            }
        }
        let missing: Vec<u64> = (0..=last)
            .filter(|n| !all.contains(&format!("round {round} record {n:08} ")))
            .collect();
        // A write in flight when the daemon died may be torn (the kernel stops a pwrite between
        // pages when a fatal signal is pending), but its writer got an error, not an OK: only
        // records after the last acknowledged one may be torn.
        // A tear is followed directly by the next record appended to that file (in this round
        // or a later one): each record starts a piece of its own.
        let pieces = all.lines().flat_map(|l| {
            let mut starts: Vec<usize> = l.match_indices("round ").map(|(i, _)| i).collect();
            if starts.first() != Some(&0) {
                starts.insert(0, 0);
            }
            starts.push(l.len());
            starts
                .windows(2)
                .map(|w| &l[w[0]..w[1]])
                .collect::<Vec<_>>()
        });
        let broken: Vec<&str> = pieces
            .filter(|l| l.len() != 203 || !l.starts_with("round ") || !l.ends_with("xxx"))
            .filter(|l| {
                let prefix = format!("round {round} record ");
                match l
                    .strip_prefix(&prefix)
                    .and_then(|r| r.get(..8))
                    .and_then(|n| n.parse::<u64>().ok())
                {
                    Some(n) => n <= last,
                    // Another round's record, or a tear too short to carry a number.
                    None => {
                        !(l.starts_with("round ") || (!l.is_empty() && "round ".starts_with(*l)))
                    }
                }
            })
            .collect();
        if !(missing.is_empty() && broken.is_empty()) {
            let keep = s.home.path().to_path_buf();
            std::mem::forget(s);
            panic!("round {round} (last acked {last}): acknowledged records {missing:?} lost; broken lines {broken:?}; left {}", keep.display());
        }
        // The store opens and answers; the remount captured what the crash left unversioned.
        s.ok(&["log", "--limit", "1"]);
        let pid = daemon_pid(&s);
        Command::new("kill")
            .args(["-9", &pid.to_string()])
            .status()
            .unwrap();
        eventually("the daemon to die", || {
            // Gone, or a zombie nobody has reaped yet.
            std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .map(|st| {
                    st.rsplit(')')
                        .next()
                        .unwrap_or("")
                        .trim_start()
                        .starts_with('Z')
                })
                .unwrap_or(true)
        });
    }
    s.mount();
    s.assert_newest_is_the_file("storm-0.log");
}

#[test]
fn every_past_moment_of_a_live_sqlite_database_opens_cleanly() {
    let s = Sandbox::new();
    std::fs::create_dir_all(s.path("state")).unwrap();
    s.mount();
    // Frequent checkpoints (each fsyncs, so each closes an epoch) give many moments to check.
    let script = common::wal_writer("state/openclaw.sqlite", 3000, 7, 400);
    s.sh(&format!("python3 - <<'PY'\n{script}\nPY"));
    let head = s.settle();
    let moments: Vec<u64> = (1..=head).collect();
    let touched = s
        .json(&["log", "--path", "state", "--limit", "100000"])
        .len();
    assert!(
        touched >= 200,
        "only {touched} moments touched the database"
    );
    let mut rng = 0x2545F4914F6CDD1Du64;
    let mut picks: Vec<u64> = Vec::new();
    while picks.len() < 200 {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        picks.push(moments[(rng % moments.len() as u64) as usize]);
    }
    picks.push(head);
    picks.sort();
    let ats: Vec<String> = picks.iter().map(|s| s.to_string()).collect();
    let last_rows = common::rows_grow(&s, "state/openclaw.sqlite", &ats);
    let checked = ats.len();
    assert!(checked >= 200);
    assert_eq!(last_rows, 3000);
    std::thread::sleep(Duration::from_millis(10));
}

/// The mount sentinels (`clawfs detach-when-gone`) watching the mount at `dir`.
fn sentinels(s: &Sandbox) -> usize {
    let dir = s.dir.to_str().unwrap();
    common::processes()
        .into_iter()
        .filter(|(_, args)| {
            args.iter().any(|a| a == "detach-when-gone")
                && args.last().map(String::as_str) == Some(dir)
        })
        .count()
}

/// A daemon killed with `kill -9` leaves the directory to its real files at once, not a dead
/// mount that fails every call ("Transport endpoint is not connected"): its sentinel detaches
/// the mount. The agent's next write lands in the real file, and the next mount versions it. A
/// clean unmount leaves no sentinel behind.
#[test]
fn a_killed_daemon_leaves_the_directory_to_its_real_files() {
    let s = Sandbox::new();
    s.mount();
    assert_eq!(sentinels(&s), 1);
    s.write("before.txt", b"versioned\n");
    s.settle();
    Command::new("kill")
        .args(["-9", &daemon_pid(&s).to_string()])
        .status()
        .unwrap();
    eventually("the dead mount to be detached", || !s.is_mounted());
    std::fs::write(s.path("after.txt"), "written while the daemon was dead\n").unwrap();
    assert_eq!(
        std::fs::read_to_string(s.path("before.txt")).unwrap(),
        "versioned\n"
    );
    eventually("the sentinel to end", || sentinels(&s) == 0);
    s.mount();
    let hist = s.json(&["history", "after.txt"]);
    assert_eq!(hist.len(), 1, "{hist:?}");
    assert_eq!(
        s.ok(&["cat", "after.txt", "--at", "now"]),
        "written while the daemon was dead\n"
    );
    assert_eq!(sentinels(&s), 1);
    s.unmount();
    eventually("no sentinel after a clean unmount", || sentinels(&s) == 0);
}
