//! `clawfs mcp`: a Model Context Protocol server on standard input and output, so the agent can
//! look back and roll back through its own tools (OpenClaw: `openclaw mcp add clawfs --command
//! clawfs --arg mcp`).
//!
//! Each tool call runs this same binary as a person at a terminal would (`clawfs -C DIR …`): it
//! goes through the running daemon's control socket, or opens the store when nothing is
//! mounted, and gets the same checks and messages. Nothing here touches the store. A rollback
//! only previews unless the call says `apply: true`, and never passes `--force` or
//! `--include-secrets`: replacing files under a live writer, or credentials, stays a decision
//! for the user at the terminal.
//!
//! Transport: JSON-RPC 2.0, one message per line (MCP's stdio transport). Standard output
//! carries protocol messages only.

use std::ffi::OsString;
use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{Context, Result};
use serde_json::{json, Map, Value};

/// Protocol revisions this server speaks, newest first.
const PROTOCOL_VERSIONS: &[&str] = &["2025-06-18", "2025-03-26", "2024-11-05"];

/// The most text a tool answers with; longer output is cut, and says so.
const MAX_TEXT: usize = 200_000;

/// How a moment may be named, for the tools' argument descriptions.
const WHEN: &str = "A moment: `now`, a sequence number (`1042` or `#1042`), a version id from \
                    `history`, an age (`10m`, `8h`, `2d`, `1h30m`, `10 minutes ago`: that long \
                    ago), an RFC 3339 time, a local `YYYY-MM-DD HH:MM`, a time of day (`09:00`, \
                    `yesterday 14:00`), or a mark name.";

/// What running a `clawfs` command gave.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// It exited with status 0.
    pub ok: bool,
    /// Its standard output.
    pub stdout: Vec<u8>,
    /// Its standard error.
    pub stderr: String,
}

/// One tool: what the client sees, and the command line it stands for.
struct Tool {
    name: &'static str,
    description: &'static str,
    read_only: bool,
    /// The JSON Schema of its arguments.
    schema: fn() -> Value,
    /// The `clawfs` arguments for a call, or why the call's arguments are wrong.
    argv: fn(&Args) -> Result<Vec<String>, String>,
}

const TOOLS: &[Tool] = &[
    Tool {
        name: "status",
        description: "Whether the agent's state directory is mounted and versioned, how many \
                      moments its history holds and since when, the store's size, the last \
                      error, if any, any process whose changes escape versioning because \
                      it held the directory from before the mount (it must restart), and how \
                      many changed paths wait to be versioned while the store's disk is full.",
        read_only: true,
        schema: || object(json!({}), &[]),
        argv: |a| {
            a.only(&[])?;
            Ok(vec!["status".into()])
        },
    },
    Tool {
        name: "log",
        description: "Moments of the whole state directory, newest first: sequence number, \
                      time, and the files each changed. Find here the moment to look at or to \
                      roll back to.",
        read_only: true,
        schema: || {
            object(
                json!({
                    "since": {"type": "string", "description": format!("Only moments at or after this. {WHEN}")},
                    "until": {"type": "string", "description": format!("Only moments at or before this. {WHEN}")},
                    "path": {"type": "string", "description": "Only moments that changed this file or something below this directory (relative to the state directory)."},
                    "limit": {"type": "integer", "minimum": 1, "description": "At most this many moments (default 20)."}
                }),
                &[],
            )
        },
        argv: |a| {
            a.only(&["since", "until", "path", "limit"])?;
            let mut v = vec![
                "log".to_string(),
                format!("--limit={}", a.uint("limit")?.unwrap_or(20)),
            ];
            v.extend(a.options(&["since", "until", "path"])?);
            Ok(v)
        },
    },
    Tool {
        name: "history",
        description: "Every version of one file, newest first: when, what happened to it \
                      (write, rename, delete, rollback), its size, and its version id.",
        read_only: true,
        schema: || {
            object(
                json!({
                    "path": {"type": "string", "description": "The file, relative to the state directory (e.g. `workspace/MEMORY.md`)."},
                    "limit": {"type": "integer", "minimum": 1, "description": "At most this many versions (default 50)."},
                    "follow": {"type": "boolean", "description": "Also list what the file was under earlier names, back through renames (default false)."}
                }),
                &["path"],
            )
        },
        argv: |a| {
            a.only(&["path", "limit", "follow"])?;
            let mut argv = vec![
                "history".into(),
                format!("--limit={}", a.uint("limit")?.unwrap_or(50)),
            ];
            if a.bool("follow")?.unwrap_or(false) {
                argv.push("--follow".into());
            }
            argv.extend(["--".into(), a.required("path")?.into()]);
            Ok(argv)
        },
    },
    Tool {
        name: "show",
        description: "A file's content as it was at a moment (default: now).",
        read_only: true,
        schema: || {
            object(
                json!({
                    "path": {"type": "string", "description": "The file, relative to the state directory."},
                    "at": {"type": "string", "description": format!("The moment (default `now`). {WHEN}")}
                }),
                &["path"],
            )
        },
        argv: |a| {
            a.only(&["path", "at"])?;
            Ok(vec![
                "cat".into(),
                format!("--at={}", a.str("at")?.unwrap_or("now")),
                "--".into(),
                a.required("path")?.into(),
            ])
        },
    },
    Tool {
        name: "diff",
        description: "What changed between two moments: files added, changed and removed, with \
                      a unified diff of text files. Default: the last moment's changes.",
        read_only: true,
        schema: || {
            object(
                json!({
                    "from": {"type": "string", "description": format!("From this moment (default: the one before `to`). {WHEN}")},
                    "to": {"type": "string", "description": format!("To this moment (default `now`). {WHEN}")},
                    "paths": {"type": "array", "items": {"type": "string"}, "description": "Only these files or directories."}
                }),
                &[],
            )
        },
        argv: |a| {
            a.only(&["from", "to", "paths"])?;
            let mut v = vec!["diff".to_string(), "--patch".into()];
            v.extend(a.options(&["from", "to"])?);
            v.push("--".into());
            v.extend(a.strs("paths")?);
            Ok(v)
        },
    },
    Tool {
        name: "rollback",
        description: "Put files, or the whole state directory, back as they were at a moment. \
                      Without `apply: true` it only shows what would change. Applied, it first \
                      marks the moment before, then writes the old content as new versions, so \
                      it can be undone by rolling back to that mark. It refuses files that a \
                      running process holds open for writing, and leaves credentials alone.",
        read_only: false,
        schema: || {
            object(
                json!({
                    "to": {"type": "string", "description": format!("The moment to go back to. {WHEN}")},
                    "paths": {"type": "array", "items": {"type": "string"}, "description": "Only these files or directories (default: the whole state directory)."},
                    "apply": {"type": "boolean", "description": "Really change the files (default false: preview only)."}
                }),
                &["to"],
            )
        },
        argv: |a| {
            a.only(&["to", "paths", "apply"])?;
            let mut v = vec![
                "rollback".to_string(),
                format!("--to={}", a.required("to")?),
            ];
            if a.bool("apply")?.unwrap_or(false) {
                v.push("--yes".into());
            } else {
                v.extend(["--preview".into(), "--patch".into()]);
            }
            v.push("--".into());
            v.extend(a.strs("paths")?);
            Ok(v)
        },
    },
    Tool {
        name: "mark",
        description: "Name the current moment, to come back to it by name (before a risky \
                      change, say).",
        read_only: false,
        schema: || {
            object(
                json!({
                    "name": {"type": "string", "description": "The name (e.g. `before-upgrade`)."},
                    "message": {"type": "string", "description": "What it is for."}
                }),
                &["name"],
            )
        },
        argv: |a| {
            a.only(&["name", "message"])?;
            Ok(vec![
                "mark".into(),
                format!("--message={}", a.str("message")?.unwrap_or("")),
                "--".into(),
                a.required("name")?.into(),
            ])
        },
    },
];

/// A JSON Schema object with these properties.
fn object(properties: Value, required: &[&str]) -> Value {
    json!({
        "type": "object",
        "properties": properties,
        "required": required,
        "additionalProperties": false,
    })
}

/// A tool call's arguments, read with messages a model can act on.
struct Args<'a>(&'a Map<String, Value>);

impl Args<'_> {
    fn only(&self, known: &[&str]) -> Result<(), String> {
        match self.0.keys().find(|k| !known.contains(&k.as_str())) {
            Some(k) if known.is_empty() => {
                Err(format!("unknown argument `{k}`: this tool takes none"))
            }
            Some(k) => Err(format!(
                "unknown argument `{k}` (known: {})",
                known.join(", ")
            )),
            None => Ok(()),
        }
    }

    fn str(&self, key: &str) -> Result<Option<&str>, String> {
        match self.0.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(_) => Err(format!("`{key}` must be a string")),
        }
    }

    /// `--key=value` for each of `keys` given (attached, so a value cannot pass for an option).
    fn options(&self, keys: &[&str]) -> Result<Vec<String>, String> {
        let mut v = Vec::new();
        for key in keys {
            if let Some(s) = self.str(key)? {
                v.push(format!("--{key}={s}"));
            }
        }
        Ok(v)
    }

    fn required(&self, key: &str) -> Result<&str, String> {
        match self.str(key)? {
            Some(s) if !s.is_empty() => Ok(s),
            _ => Err(format!("`{key}` is required")),
        }
    }

    fn uint(&self, key: &str) -> Result<Option<u64>, String> {
        match self.0.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(v) => match v.as_u64() {
                Some(n) if n >= 1 => Ok(Some(n)),
                _ => Err(format!("`{key}` must be a whole number of at least 1")),
            },
        }
    }

    fn bool(&self, key: &str) -> Result<Option<bool>, String> {
        match self.0.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(*b)),
            Some(_) => Err(format!("`{key}` must be true or false")),
        }
    }

    fn strs(&self, key: &str) -> Result<Vec<String>, String> {
        match self.0.get(key) {
            None | Some(Value::Null) => Ok(Vec::new()),
            Some(Value::Array(items)) => items
                .iter()
                .map(|v| {
                    v.as_str()
                        .map(str::to_string)
                        .ok_or_else(|| format!("`{key}` must be a list of strings"))
                })
                .collect(),
            Some(_) => Err(format!("`{key}` must be a list of strings")),
        }
    }
}

/// The protocol, apart from the transport and from how commands run.
pub struct Server<R> {
    dir: PathBuf,
    run: R,
}

impl<R: FnMut(&[String]) -> std::io::Result<Outcome>> Server<R> {
    /// A server for the state directory `dir`, running tool commands with `run` (given the
    /// arguments after `clawfs -C DIR`).
    pub fn new(dir: PathBuf, run: R) -> Self {
        Server { dir, run }
    }

    /// The answer to one line from the client, if it calls for one.
    pub fn handle_line(&mut self, line: &str) -> Option<Value> {
        match serde_json::from_str::<Value>(line) {
            Ok(msg) => self.handle(&msg),
            Err(e) => Some(error(Value::Null, -32700, &format!("not JSON: {e}"))),
        }
    }

    /// The answer to one message, if it calls for one (requests do; notifications and the
    /// client's own answers do not).
    pub fn handle(&mut self, msg: &Value) -> Option<Value> {
        let Some(obj) = msg.as_object() else {
            return Some(error(
                Value::Null,
                -32600,
                "a message must be a JSON object",
            ));
        };
        let id = obj.get("id").cloned();
        let Some(method) = obj.get("method").and_then(Value::as_str) else {
            // An answer to a request of ours (we send none), or garbage with an id.
            return match (&id, obj.contains_key("result") || obj.contains_key("error")) {
                (Some(id), false) => Some(error(id.clone(), -32600, "no `method`")),
                _ => None,
            };
        };
        let id = id?; // A notification: nothing to answer.
        let params = obj.get("params").cloned().unwrap_or(Value::Null);
        Some(match method {
            "initialize" => result(id, self.initialize(&params)),
            "ping" => result(id, json!({})),
            "tools/list" => result(id, json!({ "tools": tool_list() })),
            "tools/call" => match self.call(&params) {
                Ok(r) => result(id, r),
                Err(e) => error(id, -32602, &e),
            },
            other => error(id, -32601, &format!("unknown method `{other}`")),
        })
    }

    fn initialize(&self, params: &Value) -> Value {
        let asked = params.get("protocolVersion").and_then(Value::as_str);
        let version = asked
            .filter(|v| PROTOCOL_VERSIONS.contains(v))
            .unwrap_or(PROTOCOL_VERSIONS[0]);
        json!({
            "protocolVersion": version,
            "capabilities": { "tools": { "listChanged": false } },
            "serverInfo": { "name": "clawfs", "version": env!("CARGO_PKG_VERSION") },
            "instructions": format!(
                "clawfs versions every change to the agent's state directory {}. To undo damage \
                 (a bad edit, a deleted or rewritten file, a broken config): find the moment \
                 with `log` (or `history` for one file), look with `show` and `diff`, then \
                 `rollback` to preview and `rollback` with apply=true to do it. Every rollback \
                 can itself be undone. Paths are relative to the state directory.",
                self.dir.display()
            ),
        })
    }

    fn call(&mut self, params: &Value) -> Result<Value, String> {
        let name = params
            .get("name")
            .and_then(Value::as_str)
            .ok_or("`name` (the tool) is required")?;
        let tool = TOOLS
            .iter()
            .find(|t| t.name == name)
            .ok_or_else(|| format!("unknown tool `{name}`"))?;
        let empty = Map::new();
        let args = match params.get("arguments") {
            None | Some(Value::Null) => &empty,
            Some(Value::Object(m)) => m,
            Some(_) => return Err("`arguments` must be an object".into()),
        };
        let argv = match (tool.argv)(&Args(args)) {
            Ok(v) => v,
            Err(e) => return Ok(tool_result(&e, true)),
        };
        Ok(match (self.run)(&argv) {
            Ok(o) if o.ok => tool_result(&text_of(name, &o.stdout), false),
            Ok(o) => {
                let msg = o.stderr.trim();
                let msg = msg.strip_prefix("clawfs: ").unwrap_or(msg);
                tool_result(if msg.is_empty() { "it failed" } else { msg }, true)
            }
            Err(e) => tool_result(&format!("could not run clawfs: {e}"), true),
        })
    }
}

fn tool_list() -> Vec<Value> {
    TOOLS
        .iter()
        .map(|t| {
            json!({
                "name": t.name,
                "description": t.description,
                "inputSchema": (t.schema)(),
                "annotations": {
                    "readOnlyHint": t.read_only,
                    "destructiveHint": !t.read_only && t.name == "rollback",
                    "openWorldHint": false,
                },
            })
        })
        .collect()
}

/// What a tool answers with: its output as text, cut at `MAX_TEXT`.
fn text_of(tool: &str, stdout: &[u8]) -> String {
    let mut text = match std::str::from_utf8(stdout) {
        Ok(s) => s.to_string(),
        Err(_) if tool == "show" => {
            return format!("(binary content, {} bytes: not shown)", stdout.len())
        }
        Err(_) => String::from_utf8_lossy(stdout).into_owned(),
    };
    if text.is_empty() {
        return "(nothing)".into();
    }
    if text.len() > MAX_TEXT {
        let mut cut = MAX_TEXT;
        while !text.is_char_boundary(cut) {
            cut -= 1;
        }
        text.truncate(cut);
        text.push_str(&format!("\n… (cut: {} bytes in all)", stdout.len()));
    }
    text
}

fn tool_result(text: &str, is_error: bool) -> Value {
    json!({ "content": [{ "type": "text", "text": text }], "isError": is_error })
}

fn result(id: Value, result: Value) -> Value {
    json!({ "jsonrpc": "2.0", "id": id, "result": result })
}

fn error(id: Value, code: i64, message: &str) -> Value {
    json!({ "jsonrpc": "2.0", "id": id, "error": { "code": code, "message": message } })
}

/// Serves the protocol on standard input and output until the client closes it.
pub fn serve(dir: &Path, store: Option<&Path>) -> Result<()> {
    let exe = std::env::current_exe().context("finding the clawfs binary")?;
    let mut global: Vec<OsString> = vec!["-C".into(), dir.into()];
    if let Some(s) = store {
        global.extend(["--store".into(), s.into()]);
    }
    let mut server = Server::new(dir.to_path_buf(), |args: &[String]| {
        let out = Command::new(&exe)
            .args(&global)
            .args(args)
            .stdin(Stdio::null())
            .output()?;
        Ok(Outcome {
            ok: out.status.success(),
            stdout: out.stdout,
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        })
    });
    let stdin = std::io::stdin();
    let stdout = std::io::stdout();
    for line in stdin.lock().lines() {
        let line = line.context("reading from the client")?;
        if line.trim().is_empty() {
            continue;
        }
        if let Some(answer) = server.handle_line(&line) {
            let mut out = stdout.lock();
            serde_json::to_writer(&mut out, &answer)?;
            out.write_all(b"\n")?;
            out.flush().context("writing to the client")?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The command lines a test server ran.
    type Calls = std::rc::Rc<std::cell::RefCell<Vec<Vec<String>>>>;

    /// A server whose commands are recorded, and answered with `answer`.
    fn server(
        answer: Outcome,
    ) -> (
        Server<impl FnMut(&[String]) -> std::io::Result<Outcome>>,
        Calls,
    ) {
        let calls = Calls::default();
        let seen = calls.clone();
        let s = Server::new(
            PathBuf::from("/home/a/.openclaw"),
            move |args: &[String]| {
                seen.borrow_mut().push(args.to_vec());
                Ok(answer.clone())
            },
        );
        (s, calls)
    }

    fn ok(stdout: &str) -> Outcome {
        Outcome {
            ok: true,
            stdout: stdout.as_bytes().to_vec(),
            stderr: String::new(),
        }
    }

    fn call(
        s: &mut Server<impl FnMut(&[String]) -> std::io::Result<Outcome>>,
        name: &str,
        args: Value,
    ) -> Value {
        s.handle(&json!({"jsonrpc": "2.0", "id": 7, "method": "tools/call", "params": {"name": name, "arguments": args}}))
            .unwrap()
    }

    #[test]
    fn initialize_agrees_on_a_version_it_speaks() {
        let (mut s, _) = server(ok(""));
        for (asked, got) in [
            ("2025-03-26", "2025-03-26"),
            ("2024-11-05", "2024-11-05"),
            ("1999-01-01", "2025-06-18"),
        ] {
            let r = s
                .handle(&json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {"protocolVersion": asked, "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}}))
                .unwrap();
            assert_eq!(r["id"], 1);
            assert_eq!(r["result"]["protocolVersion"], got);
            assert_eq!(r["result"]["serverInfo"]["name"], "clawfs");
            assert!(r["result"]["capabilities"]["tools"].is_object());
        }
    }

    #[test]
    fn notifications_and_answers_get_no_reply_and_bad_messages_get_errors() {
        let (mut s, _) = server(ok(""));
        assert_eq!(
            s.handle(&json!({"jsonrpc": "2.0", "method": "notifications/initialized"})),
            None
        );
        assert_eq!(
            s.handle(&json!({"jsonrpc": "2.0", "id": 3, "result": {}})),
            None
        );
        let cases = [
            ("{not json", -32700),
            ("[1, 2]", -32600),
            (r#"{"jsonrpc": "2.0", "id": 4}"#, -32600),
            (
                r#"{"jsonrpc": "2.0", "id": 5, "method": "resources/list"}"#,
                -32601,
            ),
            (
                r#"{"jsonrpc": "2.0", "id": 6, "method": "tools/call", "params": {"name": "format_disk"}}"#,
                -32602,
            ),
        ];
        for (line, code) in cases {
            let r = s.handle_line(line).unwrap();
            assert_eq!(r["error"]["code"], code, "{line}: {r}");
        }
        let r = s
            .handle(&json!({"jsonrpc": "2.0", "id": "p", "method": "ping"}))
            .unwrap();
        assert_eq!(r, json!({"jsonrpc": "2.0", "id": "p", "result": {}}));
    }

    #[test]
    fn every_tool_is_listed_with_a_closed_schema() {
        let (mut s, _) = server(ok(""));
        let r = s
            .handle(&json!({"jsonrpc": "2.0", "id": 1, "method": "tools/list"}))
            .unwrap();
        let tools = r["result"]["tools"].as_array().unwrap();
        let names: Vec<&str> = tools.iter().map(|t| t["name"].as_str().unwrap()).collect();
        assert_eq!(
            names,
            ["status", "log", "history", "show", "diff", "rollback", "mark"]
        );
        for t in tools {
            assert_eq!(t["inputSchema"]["type"], "object", "{t}");
            assert_eq!(t["inputSchema"]["additionalProperties"], false, "{t}");
            assert!(!t["description"].as_str().unwrap().is_empty());
        }
        let rollback = tools.iter().find(|t| t["name"] == "rollback").unwrap();
        assert_eq!(rollback["annotations"]["destructiveHint"], true);
        assert_eq!(rollback["inputSchema"]["required"], json!(["to"]));
    }

    #[test]
    fn calls_become_command_lines_where_no_argument_can_pass_for_an_option() {
        let cases = [
            ("status", json!({}), vec!["status"]),
            (
                "log",
                json!({"since": "10m", "limit": 5}),
                vec!["log", "--limit=5", "--since=10m"],
            ),
            (
                "history",
                json!({"path": "--force"}),
                vec!["history", "--limit=50", "--", "--force"],
            ),
            (
                "show",
                json!({"path": "SOUL.md", "at": "-1"}),
                vec!["cat", "--at=-1", "--", "SOUL.md"],
            ),
            (
                "diff",
                json!({"paths": ["a", "-b"]}),
                vec!["diff", "--patch", "--", "a", "-b"],
            ),
            (
                "rollback",
                json!({"to": "#3"}),
                vec!["rollback", "--to=#3", "--preview", "--patch", "--"],
            ),
            (
                "rollback",
                json!({"to": "2h", "paths": ["openclaw.json"], "apply": true}),
                vec!["rollback", "--to=2h", "--yes", "--", "openclaw.json"],
            ),
            (
                "mark",
                json!({"name": "-y"}),
                vec!["mark", "--message=", "--", "-y"],
            ),
        ];
        for (tool, args, want) in cases {
            let (mut s, calls) = server(ok("fine\n"));
            let r = call(&mut s, tool, args.clone());
            assert_eq!(r["result"]["isError"], false, "{tool} {args}: {r}");
            assert_eq!(r["result"]["content"][0]["text"], "fine\n");
            assert_eq!(
                calls.borrow().as_slice(),
                &[want.iter().map(|s| s.to_string()).collect::<Vec<_>>()],
                "{tool} {args}"
            );
        }
    }

    #[test]
    fn bad_arguments_are_refused_without_running_anything() {
        let cases = [
            (
                "status",
                json!({"verbose": true}),
                "unknown argument `verbose`: this tool takes none",
            ),
            ("history", json!({}), "`path` is required"),
            ("history", json!({"path": ""}), "`path` is required"),
            (
                "log",
                json!({"limit": 0}),
                "`limit` must be a whole number of at least 1",
            ),
            (
                "log",
                json!({"limit": "5"}),
                "`limit` must be a whole number of at least 1",
            ),
            (
                "rollback",
                json!({"to": "1h", "apply": "yes"}),
                "`apply` must be true or false",
            ),
            (
                "rollback",
                json!({"to": "1h", "force": true}),
                "unknown argument `force` (known: to, paths, apply)",
            ),
            (
                "diff",
                json!({"paths": "a"}),
                "`paths` must be a list of strings",
            ),
        ];
        for (tool, args, msg) in cases {
            let (mut s, calls) = server(ok(""));
            let r = call(&mut s, tool, args.clone());
            assert_eq!(r["result"]["isError"], true, "{tool} {args}");
            assert_eq!(r["result"]["content"][0]["text"], msg, "{tool} {args}");
            assert!(calls.borrow().is_empty());
        }
    }

    #[test]
    fn failures_and_odd_output_read_well() {
        let (mut s, _) = server(Outcome {
            ok: false,
            stdout: Vec::new(),
            stderr: "clawfs: no version of SOUL.md at #3\n".into(),
        });
        let r = call(&mut s, "show", json!({"path": "SOUL.md", "at": "#3"}));
        assert_eq!(r["result"]["isError"], true);
        assert_eq!(
            r["result"]["content"][0]["text"],
            "no version of SOUL.md at #3"
        );

        let (mut s, _) = server(Outcome {
            ok: true,
            stdout: vec![0xff, 0, 1],
            stderr: String::new(),
        });
        let r = call(&mut s, "show", json!({"path": "x.bin"}));
        assert_eq!(
            r["result"]["content"][0]["text"],
            "(binary content, 3 bytes: not shown)"
        );

        let (mut s, _) = server(ok(&"é".repeat(MAX_TEXT)));
        let r = call(&mut s, "show", json!({"path": "big.md"}));
        let text = r["result"]["content"][0]["text"].as_str().unwrap();
        assert!(text.len() < MAX_TEXT + 100);
        assert!(
            text.ends_with(&format!("… (cut: {} bytes in all)", 2 * MAX_TEXT)),
            "{}",
            &text[text.len() - 60..]
        );
    }
}
