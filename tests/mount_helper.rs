//! `mount -t fuse.clawfs DIR DIR`, an fstab line, and the systemd unit's commands.

mod common;

use std::process::Command;

use common::{eventually, Sandbox};

fn install_helper() -> std::path::PathBuf {
    let dir = tempfile::tempdir().unwrap().keep();
    let helper = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("mount-helper/mount.clawfs");
    for name in ["mount.clawfs", "mount.fuse.clawfs"] {
        // mount(8) only looks in /sbin; link there for the test's duration (we run as root).
        let dest = std::path::Path::new("/sbin").join(name);
        let _ = std::fs::remove_file(&dest);
        std::os::unix::fs::symlink(&helper, &dest).unwrap();
    }
    dir
}

/// Runs mount(8) with `args`, as root would, pointing the helper at the binary under test.
fn mount8(s: &Sandbox, args: &[&str]) {
    let out = Command::new("mount")
        .args(args)
        .env("CLAWFS_BIN", common::bin())
        .env("HOME", s.home.path())
        .output()
        .unwrap();
    common::assert_ok(&out);
}

#[test]
fn mount_t_fuse_clawfs_and_fstab_work() {
    install_helper();
    let s = Sandbox::new();
    s.write("workspace/MEMORY.md", b"x");
    let dir = s.dir.to_str().unwrap();
    let store = s.store.to_str().unwrap();
    mount8(
        &s,
        &[
            "-t",
            "fuse.clawfs",
            "-o",
            &format!("store={store}"),
            dir,
            dir,
        ],
    );
    eventually("the mount", || s.is_mounted());
    assert_eq!(s.ok(&["cat", "workspace/MEMORY.md"]), "x");
    s.unmount();

    // An fstab line, through a private fstab (mount -T).
    let fstab = s.home.path().join("fstab");
    std::fs::write(
        &fstab,
        format!("{dir} {dir} fuse.clawfs defaults,noauto,store={store} 0 0\n"),
    )
    .unwrap();
    mount8(&s, &["-T", fstab.to_str().unwrap(), dir]);
    eventually("the fstab mount", || s.is_mounted());
    s.unmount();

    // Two different directories are refused with a clear message.
    let other = s.home.path().join("other");
    std::fs::create_dir(&other).unwrap();
    let out = Command::new("/sbin/mount.clawfs")
        .args([dir, other.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("same directory twice"));
}

#[test]
fn the_systemd_unit_commands_mount_and_unmount() {
    let s = Sandbox::new();
    let unit = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("mount-helper/clawfs@.service"),
    )
    .unwrap();
    let line = |key: &str| {
        unit.lines()
            .find_map(|l| l.strip_prefix(key))
            .unwrap()
            .replace("%f", s.dir.to_str().unwrap())
            .replace("/usr/bin/env clawfs", common::bin().to_str().unwrap())
    };
    let start = line("ExecStart=");
    let stop = line("ExecStop=");
    assert!(
        start.contains("--foreground"),
        "systemd needs a foreground daemon: {start}"
    );
    // `Type=notify`: the daemon says when the mount is up, so that the agent's unit, ordered
    // after this one, starts only then.
    assert!(unit.lines().any(|l| l == "Type=notify"), "{unit}");
    let notify = s.home.path().join("notify.sock");
    let systemd = std::os::unix::net::UnixDatagram::bind(&notify).unwrap();
    systemd
        .set_read_timeout(Some(std::time::Duration::from_secs(20)))
        .unwrap();
    let mut args = start.split_whitespace();
    let mut daemon = s.cmd();
    let _ = args.next();
    let mut daemon = {
        daemon.args(args).env("NOTIFY_SOCKET", &notify);
        daemon.spawn().unwrap()
    };
    let mut msg = [0u8; 64];
    let n = systemd.recv(&mut msg).expect("READY=1 from the daemon");
    assert_eq!(&msg[..n], b"READY=1");
    assert!(s.is_mounted(), "READY=1 came before the mount was up");
    let mut args = stop.split_whitespace();
    let _ = args.next();
    let st = s.cmd().args(args).status().unwrap();
    assert!(st.success());
    let code = daemon.wait().unwrap();
    assert!(code.success(), "daemon exited with {code}");
    assert!(!s.is_mounted());
}

/// The prune timer's service runs `clawfs prune` on the directory it names, against the live
/// mount; the timer fires daily and catches up after downtime.
#[test]
fn the_prune_timer_runs_prune_on_the_mounted_directory() {
    let s = Sandbox::new();
    let units = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("mount-helper");
    let service = std::fs::read_to_string(units.join("clawfs-prune@.service")).unwrap();
    let timer = std::fs::read_to_string(units.join("clawfs-prune@.timer")).unwrap();
    assert!(service.lines().any(|l| l == "Type=oneshot"), "{service}");
    for want in [
        "OnCalendar=daily",
        "Persistent=true",
        "WantedBy=timers.target",
    ] {
        assert!(timer.lines().any(|l| l == want), "{want} in {timer}");
    }
    let start = service
        .lines()
        .find_map(|l| l.strip_prefix("ExecStart="))
        .unwrap()
        .replace("%f", s.dir.to_str().unwrap())
        .replace("/usr/bin/env clawfs", common::bin().to_str().unwrap());
    s.mount();
    s.write("MEMORY.md", b"remember this\n");
    s.settle();
    let mut args = start.split_whitespace();
    let _ = args.next();
    let out = s.cmd().args(args).output().unwrap();
    common::assert_ok(&out);
    let said = String::from_utf8_lossy(&out.stdout);
    // Everything is younger than a day: the default policy keeps it all.
    let words: Vec<&str> = said.split_whitespace().collect();
    assert_eq!(words[0], "kept", "{said}");
    assert_eq!(words[1], words[3], "{said}");
    assert_eq!(words[4], "moments", "{said}");
    assert_eq!(s.ok(&["cat", "MEMORY.md"]), "remember this\n");
    s.unmount();
}
