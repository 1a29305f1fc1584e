//! Real S3-compatible servers on 127.0.0.1 that a test starts and stops: `s3s-fs` (which
//! checks SigV4 signatures) and moto's server.

use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const ACCESS_KEY: &str = "clawfs-test-key";
pub const SECRET_KEY: &str = "clawfs-test-secret";
pub const BUCKET: &str = "bkt";

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn wait_listening(port: u16) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            Instant::now() < deadline,
            "server on port {port} did not start"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn find(bin: &str) -> PathBuf {
    let home = std::env::var("HOME").unwrap_or_default();
    let mut dirs: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default();
    dirs.push(Path::new(&home).join(".cargo/bin"));
    dirs.into_iter()
        .map(|d| d.join(bin))
        .find(|p| p.exists())
        .unwrap_or_else(|| panic!("{bin} is not installed (scripts/test.sh installs it)"))
}

/// `s3s-fs` serving a directory; objects are plain files under `root/<bucket>/`.
pub struct S3s {
    child: Option<Child>,
    pub root: tempfile::TempDir,
    pub port: u16,
}

impl S3s {
    pub fn start() -> S3s {
        let root = tempfile::Builder::new()
            .prefix("clawfs-s3s-")
            .tempdir()
            .unwrap();
        std::fs::create_dir_all(root.path().join(BUCKET)).unwrap();
        let mut s = S3s {
            child: None,
            root,
            port: free_port(),
        };
        s.restart();
        s
    }

    /// Starts it again (same port, same data) after `kill`.
    pub fn restart(&mut self) {
        let child = Command::new(find("s3s-fs"))
            .args(["--host", "127.0.0.1", "--port", &self.port.to_string()])
            .args(["--access-key", ACCESS_KEY, "--secret-key", SECRET_KEY])
            .arg(self.root.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        self.child = Some(child);
        wait_listening(self.port);
    }

    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Every object file in the bucket (recursively).
    pub fn objects(&self) -> Vec<PathBuf> {
        let mut out = Vec::new();
        walk(&self.root.path().join(BUCKET), &mut out);
        out.sort();
        out
    }

    /// Every file the server keeps, metadata included.
    pub fn all_files(&self) -> Vec<PathBuf> {
        let mut out = Vec::new();
        walk(self.root.path(), &mut out);
        out
    }
}

fn walk(d: &Path, out: &mut Vec<PathBuf>) {
    if let Ok(rd) = std::fs::read_dir(d) {
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                walk(&p, out);
            } else {
                out.push(p);
            }
        }
    }
}

impl Drop for S3s {
    fn drop(&mut self) {
        self.kill();
    }
}

/// moto's S3 server, with a bucket made through its API.
pub struct Moto {
    child: Child,
    pub port: u16,
}

impl Moto {
    pub fn start() -> Moto {
        let port = free_port();
        let child = Command::new(find("moto_server"))
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        wait_listening(port);
        let m = Moto { child, port };
        let out = Command::new("python3")
            .arg("-c")
            .arg(format!(
                "import boto3; boto3.client('s3', endpoint_url='{}', region_name='us-east-1', \
                 aws_access_key_id='a', aws_secret_access_key='b').create_bucket(Bucket='{BUCKET}')",
                m.endpoint()
            ))
            .output()
            .unwrap();
        super::assert_ok(&out);
        m
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Adds remote `origin`: bucket `bkt` of `s3`, under `agent/`, opened with `pass`.
pub fn s3_remote(sb: &super::Sandbox, s3: &S3s, pass: &str, extra: &[&str]) {
    sb.set_env("CLAWFS_PASSPHRASE", pass);
    sb.set_env("AWS_ACCESS_KEY_ID", ACCESS_KEY);
    sb.set_env("AWS_SECRET_ACCESS_KEY", SECRET_KEY);
    let ep = s3.endpoint();
    let mut args = vec![
        "remote",
        "add",
        "origin",
        "s3://bkt/agent",
        "--endpoint",
        &ep,
        "--path-style",
    ];
    args.extend_from_slice(extra);
    sb.ok(&args);
}
