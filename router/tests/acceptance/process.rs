//! The real binary as a child process of the test: for limits set before `exec`
//! (`setrlimit`, `sched_setaffinity`), and for replicas that a test kills with
//! SIGKILL.

use std::time::Duration;

use tempfile::TempDir;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

use crate::support::*;

/// A router running as its own process.
pub struct RouterProcess {
    pub base_url: String,
    pub addr: String,
    /// Its output up to the "listening" line, without colours.
    pub log: Vec<String>,
    pub child: Child,
    _dir: TempDir,
}

impl RouterProcess {
    /// Starts the binary over `node`; `before_exec` runs in the child before `exec`.
    pub async fn start(
        node: &mock_node::MockNode,
        extra_args: &[&str],
        before_exec: impl FnMut() -> std::io::Result<()> + Send + Sync + 'static,
    ) -> RouterProcess {
        let dir = TempDir::new().unwrap();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_llm-router"));
        cmd.args(["--host", "127.0.0.1", "--port", "0", "--admin-key", ADMIN_KEY])
            .arg("--data-dir")
            .arg(dir.path())
            .args(["--node", &node.base_url(), "--health-interval-ms", "60000"])
            .args(extra_args)
            .env_remove("LLM_ROUTER_LOG")
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true);
        // SAFETY: `before_exec` only makes system calls that are safe after fork.
        unsafe { cmd.pre_exec(before_exec) };
        let mut child = cmd.spawn().expect("the router binary starts");
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let mut log = Vec::new();
        let base_url = loop {
            let line = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
                .await
                .expect("the router starts within 30 s")
                .unwrap()
                .unwrap_or_else(|| panic!("the router exited: {log:#?}"));
            let line = strip_ansi(&line);
            log.push(line.clone());
            if let Some(rest) = line.strip_prefix("llm-router listening on ") {
                break rest.split_whitespace().next().unwrap().to_string();
            }
        };
        // Keep reading, so the router never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        RouterProcess {
            addr: base_url.trim_start_matches("http://").to_string(),
            base_url,
            log,
            child,
            _dir: dir,
        }
    }

    pub fn log_line(&self, containing: &str) -> &str {
        self.log
            .iter()
            .find(|l| l.contains(containing))
            .unwrap_or_else(|| panic!("no log line with {containing:?}: {:#?}", self.log))
    }

    /// An admin route's JSON answer.
    pub async fn get(&self, path: &str) -> serde_json::Value {
        let resp = reqwest::Client::new()
            .get(format!("{}{path}", self.base_url))
            .bearer_auth(ADMIN_KEY)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200, "GET {path}");
        resp.json().await.unwrap()
    }

    /// A chat completion through the router, 10 s at most.
    pub async fn chat(&self) -> u16 {
        let request = reqwest::Client::new()
            .post(format!("{}/v1/chat/completions", self.base_url))
            .json(&chat_body("m", "hello", false))
            .send();
        let resp = tokio::time::timeout(Duration::from_secs(10), request)
            .await
            .expect("the request is answered within 10 s")
            .unwrap();
        resp.status().as_u16()
    }
}

fn strip_ansi(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}
