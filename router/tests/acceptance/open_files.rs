//! The real binary under a low open-file limit, and its thread count: started as a
//! child process (`setrlimit` and `sched_setaffinity` before `exec`), so that the
//! limits do not touch the test process.

use std::time::Duration;

use tokio::net::TcpStream;

use crate::hostile::is_open;
use crate::process::RouterProcess;
use crate::support::*;

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
