//! The real binary under a low open-file limit, and its thread count: started as a
//! child process (`setrlimit` and `sched_setaffinity` before `exec`), so that the
//! limits do not touch the test process.

use std::time::Duration;

use tempfile::TempDir;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::net::TcpStream;
use tokio::process::{Child, Command};

use crate::hostile::is_open;
use crate::support::*;

/// A router running as its own process.
struct RouterProcess {
    base_url: String,
    addr: String,
    /// Its output up to the "listening" line, without colours.
    log: Vec<String>,
    _child: Child,
    _dir: TempDir,
}

impl RouterProcess {
    /// Starts the binary over `node`; `before_exec` runs in the child before `exec`.
    async fn start(
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
            _child: child,
            _dir: dir,
        }
    }

    fn log_line(&self, containing: &str) -> &str {
        self.log
            .iter()
            .find(|l| l.contains(containing))
            .unwrap_or_else(|| panic!("no log line with {containing:?}: {:#?}", self.log))
    }

    /// A chat completion through the router, 10 s at most.
    async fn chat(&self) -> u16 {
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

/// Sets the child's open-file limit.
fn open_file_limit(soft: u64, hard: u64) -> impl FnMut() -> std::io::Result<()> + Send + Sync + 'static {
    move || {
        let limit = libc::rlimit {
            rlim_cur: soft as libc::rlim_t,
            rlim_max: hard as libc::rlim_t,
        };
        // SAFETY: setrlimit reads the struct passed.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(())
    }
}

/// `n` connections that send nothing.
async fn idle_clients(addr: &str, n: usize) -> Vec<TcpStream> {
    let mut clients = Vec::with_capacity(n);
    for _ in 0..n {
        clients.push(TcpStream::connect(addr).await.unwrap());
    }
    clients
}

/// How many of `clients` the router still holds open, once the count has settled.
async fn still_open(clients: &[TcpStream], expected: usize) -> usize {
    let mut open = 0;
    for _ in 0..50 {
        open = clients.iter().filter(|c| is_open(c)).count();
        if open == expected {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    open
}

#[tokio::test]
async fn the_soft_open_file_limit_is_raised_so_600_idle_clients_leave_room_for_a_request() {
    let node = mock("n", &["m"]).await;
    let args = ["--request-head-timeout-ms", "60000"];
    let router = RouterProcess::start(&node, &args, open_file_limit(256, 4096)).await;
    let line = router.log_line("open-file limit");
    assert!(
        line.ends_with("open-file limit raised to the hard limit soft_before=256 open_files=4096 max_connections=1984"),
        "{line}"
    );
    let clients = idle_clients(&router.addr, 600).await;
    assert_eq!(router.chat().await, 200);
    assert_eq!(node.received().len(), 1);
    assert_eq!(still_open(&clients, 600).await, 600);
}

#[tokio::test]
async fn under_a_hard_limit_of_256_idle_clients_are_closed_to_make_room_for_a_request() {
    let node = mock("n", &["m"]).await;
    let args = ["--request-head-timeout-ms", "60000"];
    let router = RouterProcess::start(&node, &args, open_file_limit(256, 256)).await;
    let line = router.log_line("open-file limit");
    assert!(
        line.ends_with("open-file limit open_files=256 max_connections=64"),
        "{line}"
    );
    let clients = idle_clients(&router.addr, 600).await;
    assert_eq!(router.chat().await, 200);
    assert_eq!(node.received().len(), 1);
    // 64 connections: the request's, and the 63 idle clients that came last.
    assert_eq!(still_open(&clients, 63).await, 63);
    assert!(clients[537..].iter().all(is_open));
}

#[tokio::test]
async fn pinned_to_one_core_the_router_runs_one_proxy_thread() {
    // (The default on all cores and the flag: `persistence::the_runtime_has_the_worker_threads_asked_for`.)
    let node = mock("n", &["m"]).await;
    // SAFETY: a zeroed cpu_set_t is an empty set; sched_getaffinity fills it.
    let mut allowed: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    let size = std::mem::size_of::<libc::cpu_set_t>();
    assert_eq!(unsafe { libc::sched_getaffinity(0, size, &mut allowed) }, 0);
    let first = (0..libc::CPU_SETSIZE as usize)
        .find(|&c| unsafe { libc::CPU_ISSET(c, &allowed) })
        .unwrap();
    let pin_to_one_core = move || {
        // SAFETY: as above; sched_setaffinity reads the set.
        let mut one: libc::cpu_set_t = unsafe { std::mem::zeroed() };
        unsafe { libc::CPU_SET(first, &mut one) };
        if unsafe { libc::sched_setaffinity(0, size, &one) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(())
    };
    let pinned = RouterProcess::start(&node, &[], pin_to_one_core).await;
    let line = pinned.log_line("llm-router listening on");
    assert!(line.contains(" with 1 worker thread "), "{line}");
    assert_eq!(pinned.chat().await, 200);
}
