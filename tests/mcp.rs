//! `clawfs mcp` over its real transport: the binary on a pipe, speaking JSON-RPC to a test
//! client, against a real mount; the agent's recovery from a deleted MEMORY.md done through the
//! tools alone.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, ChildStdout, Stdio};

use common::Sandbox;
use serde_json::{json, Value};

/// An MCP client on the server's standard input and output.
struct Client {
    child: Child,
    to: ChildStdin,
    from: BufReader<ChildStdout>,
    next: u64,
}

impl Client {
    fn start(s: &Sandbox) -> Client {
        let mut child = s
            .cmd()
            .arg("mcp")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let to = child.stdin.take().unwrap();
        let from = BufReader::new(child.stdout.take().unwrap());
        let mut c = Client {
            child,
            to,
            from,
            next: 0,
        };
        let init = c.request(
            "initialize",
            json!({"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "test", "version": "0"}}),
        );
        assert_eq!(init["result"]["protocolVersion"], "2025-06-18", "{init}");
        c.send(&json!({"jsonrpc": "2.0", "method": "notifications/initialized"}));
        c
    }

    fn send(&mut self, msg: &Value) {
        let mut line = serde_json::to_string(msg).unwrap();
        line.push('\n');
        self.to.write_all(line.as_bytes()).unwrap();
        self.to.flush().unwrap();
    }

    fn request(&mut self, method: &str, params: Value) -> Value {
        self.next += 1;
        let id = self.next;
        self.send(&json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params}));
        let mut line = String::new();
        self.from.read_line(&mut line).unwrap();
        let answer: Value = serde_json::from_str(&line).unwrap();
        assert_eq!(answer["id"], id, "{answer}");
        answer
    }

    /// Calls a tool; returns (text, is_error).
    fn tool(&mut self, name: &str, args: Value) -> (String, bool) {
        let r = self.request("tools/call", json!({"name": name, "arguments": args}));
        let result = &r["result"];
        assert!(result.is_object(), "{name} {r}");
        (
            result["content"][0]["text"].as_str().unwrap().to_string(),
            result["isError"].as_bool().unwrap(),
        )
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn the_agent_gets_a_deleted_memory_back_through_its_tools() {
    let s = Sandbox::new();
    s.write("workspace/MEMORY.md", b"the user's cat is called Miso\n");
    s.mount();
    std::fs::remove_file(s.path("workspace/MEMORY.md")).unwrap();
    s.settle();
    let mut c = Client::start(&s);

    let tools = c.request("tools/list", json!({}));
    let names: Vec<&str> = tools["result"]["tools"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        ["status", "log", "history", "show", "diff", "rollback", "mark"]
    );

    let (status, err) = c.tool("status", json!({}));
    assert!(!err && status.contains("mounted     yes"), "{status}");
    let (history, err) = c.tool("history", json!({"path": "workspace/MEMORY.md"}));
    assert!(!err, "{history}");
    let lines: Vec<&str> = history.lines().collect();
    assert!(lines[0].contains("delete"), "{history}");
    // The moment before the deletion, as the history shows it: `#N`.
    let before = lines[1].split_whitespace().nth(1).unwrap().to_string();
    assert!(before.starts_with('#'), "{history}");
    let (old, err) = c.tool("show", json!({"path": "workspace/MEMORY.md", "at": before}));
    assert!(!err);
    assert_eq!(old, "the user's cat is called Miso\n");

    // A preview changes nothing.
    let (preview, err) = c.tool(
        "rollback",
        json!({"to": before, "paths": ["workspace/MEMORY.md"]}),
    );
    assert!(!err && preview.contains("workspace/MEMORY.md"), "{preview}");
    assert!(!s.path("workspace/MEMORY.md").exists());
    let (done, err) = c.tool(
        "rollback",
        json!({"to": before, "paths": ["workspace/MEMORY.md"], "apply": true}),
    );
    assert!(!err, "{done}");
    assert_eq!(
        s.read("workspace/MEMORY.md"),
        b"the user's cat is called Miso\n"
    );
    let (marked, err) = c.tool("mark", json!({"name": "memory-restored"}));
    assert!(!err, "{marked}");
    // Beside the safety mark the rollback left.
    let marks = s.json(&["marks"]);
    assert!(
        marks.iter().any(|m| m["name"] == "memory-restored"),
        "{marks:?}"
    );

    // Bad input: a clear message, nothing changed, the session goes on.
    let head = s.head();
    for (tool, args, says) in [
        ("show", json!({"path": "../../etc/passwd"}), "is outside"),
        (
            "rollback",
            json!({"to": "1999-01-01", "apply": true}),
            "1999",
        ),
        (
            "rollback",
            json!({"to": "#1", "paths": ["--force"], "apply": true}),
            "--force",
        ),
        (
            "history",
            json!({"path": "nope.md"}),
            "no recorded versions",
        ),
        ("log", json!({"limit": -1}), "at least 1"),
    ] {
        let (text, err) = c.tool(tool, args.clone());
        assert!(err, "{tool} {args}: {text}");
        assert!(text.contains(says), "{tool} {args}: {text}");
    }
    assert_eq!(s.head(), head);
    assert_eq!(
        s.read("workspace/MEMORY.md"),
        b"the user's cat is called Miso\n"
    );
    let unknown = c.request("tools/call", json!({"name": "rm", "arguments": {}}));
    assert_eq!(unknown["error"]["code"], -32602, "{unknown}");
    assert_eq!(c.request("ping", json!({}))["result"], json!({}));
}
