//! Hostile input and clumsy operators (issue 14): what an attacker on the front door, a bad file
//! or a mistyped configuration can do to the built agent, each tried on loopback. Every test
//! here has a row in docs/reliability.md.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::print_stdout,
    clippy::print_stderr,
    reason = "test code: a failed step stops it with its message (Cargo.toml [lints] is for the agent)"
)]

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::thread;
use std::time::{Duration, Instant};

use common::agent::{admin_metric, free_port, get, run_to_exit, Agent, Launch, Workdir};
use common::copies::{echo_copy, exchange, streaming_copy};

/// A guard against a hang while waiting for the agent to close a connection: far above the
/// timeouts the tests configure (1 s), not a claim about speed.
const CLOSE_LIMIT: Duration = Duration::from_secs(30);

/// A config whose paths cannot work on this host is refused by `check-config` AND by `run`,
/// both with exit 78 (the unit does not retry it) and the key that names the path.
#[test]
fn paths_that_cannot_work_fail_check_config_and_run_alike_with_exit_78() {
    let dir = Workdir::new();
    let spool_file = dir.write("not-a-folder", "x");
    let cases = [
        (
            "[host]\nproc_root = \"/nonexistent/proc\"\n".to_string(),
            "host.proc_root",
        ),
        (
            "[output]\nemf_destination = \"file:/nonexistent/folder/emf.jsonl\"\n".to_string(),
            "output.emf_destination",
        ),
        (
            format!(
                "[output]\nformat = \"put_metric_data\"\nspool_dir = \"{}\"\n",
                spool_file.display()
            ),
            "output.spool_dir",
        ),
    ];
    for (section, key) in cases {
        let config = format!(
            "[endpoint]\nname = \"hostile\"\ninstance_id = \"i-1\"\n[gpu]\nenabled = false\n\
             [docker]\nenabled = false\n[admin]\nenabled = false\n{section}"
        );
        let path = dir.write("agent.toml", &config);
        let (code, stdout, stderr) =
            run_to_exit(&["check-config", "--config", path.to_str().unwrap()]);
        assert_eq!(code, Some(78), "check-config with {key}: {stdout}{stderr}");
        assert!(stderr.contains(&format!("key `{key}`")), "{stderr}");

        let stopped = Agent::start(&dir, &config).wait_exit();
        assert_eq!(
            stopped.code(),
            Some(78),
            "run with {key}: {}",
            stopped.logs.text()
        );
        assert!(stopped.logs.text().contains(key), "{}", stopped.logs.text());
    }
}

/// A FIFO as the config file: `check-config` answers at once instead of waiting for a writer.
#[test]
fn a_fifo_as_the_config_file_is_refused_at_once() {
    let dir = Workdir::new();
    let fifo = dir.join("fifo.toml");
    let c_path = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
    // SAFETY: a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c_path.as_ptr(), 0o600) }, 0);
    let (code, _, stderr) = run_to_exit(&["check-config", "--config", fifo.to_str().unwrap()]);
    assert_eq!(code, Some(78), "{stderr}");
    assert!(stderr.contains("not a regular file (a FIFO)"), "{stderr}");
    let (code, _, stderr) = run_to_exit(&["check-config", "--config", "/dev/zero"]);
    assert_eq!(code, Some(78), "{stderr}");
}

/// Reads what the peer sends until it closes (Ok) or `limit` passes (Err: still open).
fn read_until_closed(stream: &mut TcpStream, limit: Duration) -> std::io::Result<Vec<u8>> {
    stream.set_read_timeout(Some(limit))?;
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return Ok(got),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return Ok(got),
            Err(e) => return Err(e),
        }
    }
}

/// An agent with the front door on a loopback port and the admin endpoint on `admin_port`.
struct FrontDoor {
    agent: Agent,
    addr: SocketAddr,
    admin_port: u16,
}

fn front_door_config(dir: &Workdir, admin_port: u16, proxy: &str) -> String {
    format!(
        "[endpoint]\nname = \"hostile\"\ninstance_id = \"i-hostile\"\n\
         [metrics]\npublish_frequency_seconds = 10\n\
         [output]\nemf_destination = \"{}\"\n\
         [gpu]\nenabled = false\n[docker]\nenabled = false\n\
         [admin]\nlisten = \"127.0.0.1:{admin_port}\"\n\
         [proxy]\nenabled = true\nlisten = \"127.0.0.1:0\"\n{proxy}",
        dir.emf_destination()
    )
}

impl FrontDoor {
    fn start(proxy: &str) -> FrontDoor {
        FrontDoor::launch(proxy, |l| l)
    }

    fn launch(proxy: &str, adjust: impl FnOnce(Launch) -> Launch) -> FrontDoor {
        let dir = Workdir::new();
        let admin_port = free_port();
        let config = front_door_config(&dir, admin_port, proxy);
        let mut agent = adjust(Agent::launch(&dir, &config)).start();
        let addr = agent.front_door_address();
        FrontDoor {
            agent,
            addr,
            admin_port,
        }
    }
}

/// The HTTP/2 connection preface and an empty SETTINGS frame: what an h2c client sends first.
const H2_PREFACE_AND_SETTINGS: &[u8] =
    b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00";

const H2_SETTINGS: u8 = 4;
const H2_GOAWAY: u8 = 7;

/// The frame types in bytes an h2 server sent (RFC 9113 4.1: 3 bytes length, type, flags,
/// 4 bytes stream, payload).
fn h2_frame_types(mut bytes: &[u8]) -> Vec<u8> {
    let mut types = Vec::new();
    while bytes.len() >= 9 {
        let len = u32::from_be_bytes([0, bytes[0], bytes[1], bytes[2]]) as usize;
        types.push(bytes[3]);
        bytes = &bytes[(9 + len).min(bytes.len())..];
    }
    types
}

/// A silent TCP connection, an h2c connection that sent its preface and nothing else, an HTTP/1
/// keep-alive connection after its request, and one trickling its request head a byte at a time:
/// all closed by the agent once idle. Before, the first two stayed open for good (hyper times
/// out nothing before the first request).
#[test]
fn silent_idle_h2c_trickling_and_idle_keep_alive_connections_are_closed() {
    let fd = FrontDoor::start("idle_timeout_ms = 1000\n");
    let mut silent = TcpStream::connect(fd.addr).unwrap();
    let mut h2 = TcpStream::connect(fd.addr).unwrap();
    h2.write_all(H2_PREFACE_AND_SETTINGS).unwrap();
    // Slowloris: a head that never ends, one byte every 100 ms, for at most CLOSE_LIMIT.
    let trickle = TcpStream::connect(fd.addr).unwrap();
    let trickler = thread::spawn({
        let mut trickle = trickle.try_clone().unwrap();
        move || {
            let head = b"POST /invocations HTTP/1.1\r\nHost: x\r\nX-Slow: ";
            let started = Instant::now();
            for byte in head.iter().chain(std::iter::repeat(&b'a')) {
                if trickle.write_all(&[*byte]).is_err() || started.elapsed() > CLOSE_LIMIT {
                    return started.elapsed();
                }
                thread::sleep(Duration::from_millis(100));
            }
            unreachable!()
        }
    });
    let mut keep_alive = TcpStream::connect(fd.addr).unwrap();
    // No copy is configured: the front door answers 503 itself, on a kept-alive connection.
    keep_alive
        .write_all(b"POST /invocations HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n")
        .unwrap();

    read_until_closed(&mut silent, CLOSE_LIMIT).expect("the silent connection is closed");
    let h2_got =
        read_until_closed(&mut h2, CLOSE_LIMIT).expect("the idle h2c connection is closed");
    // The server's own SETTINGS, then GOAWAY on the graceful close.
    let types = h2_frame_types(&h2_got);
    assert_eq!(types.first(), Some(&H2_SETTINGS), "{types:?}");
    assert!(types.contains(&H2_GOAWAY), "{types:?}");
    let answer = read_until_closed(&mut keep_alive, CLOSE_LIMIT)
        .expect("the idle keep-alive connection is closed");
    assert!(
        answer.starts_with(b"HTTP/1.1 503"),
        "{:?}",
        String::from_utf8_lossy(&answer)
    );
    let trickled_for = trickler.join().unwrap();
    assert!(
        trickled_for < CLOSE_LIMIT,
        "the trickling connection was never closed"
    );
    drop(trickle);

    let stopped = fd.agent.stop().success();
    assert_eq!(
        stopped.logs.final_counter("proxy_connections_idle_closed"),
        4,
        "{}",
        stopped.logs.text()
    );
}

/// Under the file limit a unit without `LimitNOFILE=` gets (1,024), 1,100 idle connections
/// used to take every descriptor: new clients and /healthz got nothing. Now the cap is lowered
/// to what the limit allows, the rest are closed at once and counted, and the admin endpoint
/// and a well-behaved client are still served.
#[test]
fn past_the_connection_cap_new_connections_are_refused_cheaply_and_health_still_answers() {
    const FILE_LIMIT: u64 = 1024;
    // (1,024 - 512 reserved) / 2 descriptors per connection.
    const CAP: usize = 256;
    const HOSTILE: usize = 300;
    let fd = FrontDoor::launch("", |l| l.file_limit(FILE_LIMIT));
    let logs = fd.agent.logs();
    let lowered = logs
        .lines()
        .find(|l| {
            l.message()
                .contains("the file limit allows fewer connections")
        })
        .and_then(|l| l.field("allowed"));
    assert_eq!(lowered.as_deref(), Some("256"), "{}", logs.text());
    let connections: Vec<TcpStream> = (0..HOSTILE)
        .map(|_| TcpStream::connect(fd.addr).unwrap())
        .collect();
    // Every one accepted or refused by now, as the agent's own figures say.
    let deadline = Instant::now() + CLOSE_LIMIT;
    while admin_metric(
        fd.admin_port,
        "endpoint_metrics_agent_proxy_connections_refused_total",
    ) < (HOSTILE - CAP) as f64
    {
        assert!(Instant::now() < deadline, "{}", fd.agent.logs().text());
        thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(
        admin_metric(
            fd.admin_port,
            "endpoint_metrics_agent_proxy_connections_open"
        ),
        CAP as f64
    );
    let mut held = Vec::new();
    let mut refused = 0;
    for mut c in connections {
        c.set_nonblocking(true).unwrap();
        let mut byte = [0u8; 1];
        match c.read(&mut byte) {
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => held.push(c),
            // Closed at once: refused.
            _ => refused += 1,
        }
    }
    assert_eq!(held.len(), CAP, "refused {refused}");
    assert_eq!(refused, HOSTILE - CAP);

    // The admin endpoint still has descriptors to answer with.
    let (status, response) = get(fd.admin_port, "/healthz");
    assert!(status == 200 || status == 503, "{response}");
    assert!(response.contains("\"ready\""), "{response}");
    // Once the hostile connections go, a well-behaved client is served again.
    drop(held);
    // Until the agent has seen them close, a new client may still be refused: counted here too.
    let deadline = Instant::now() + CLOSE_LIMIT;
    let mut refused_after = 0;
    loop {
        let mut c = TcpStream::connect(fd.addr).unwrap();
        let _ = c.write_all(b"GET /ping HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
        let got = read_until_closed(&mut c, CLOSE_LIMIT).unwrap();
        if got.starts_with(b"HTTP/1.1 503") {
            break;
        }
        assert!(got.is_empty(), "{:?}", String::from_utf8_lossy(&got));
        refused_after += 1;
        assert!(Instant::now() < deadline, "no answer after the flood ended");
        thread::sleep(Duration::from_millis(50));
    }
    let stopped = fd.agent.stop().success();
    assert_eq!(
        stopped.logs.final_counter("proxy_connections_refused"),
        (HOSTILE - CAP + refused_after) as u64,
        "{}",
        stopped.logs.text()
    );
    assert_eq!(stopped.logs.final_counter("proxy_accept_errors"), 0);
}

/// Sixteen idle loopback connections used to hold every admin slot: the image's healthcheck
/// failed and Docker marked the sidecar unhealthy. Now the oldest idle one makes room.
#[test]
fn idle_clients_holding_every_admin_slot_do_not_fail_the_healthcheck() {
    let dir = Workdir::new();
    let admin_port = free_port();
    let config = format!(
        "[endpoint]\nname = \"hostile\"\ninstance_id = \"i-hostile\"\n\
         [metrics]\npublish_frequency_seconds = 10\n\
         [output]\nemf_destination = \"{}\"\n\
         [gpu]\nenabled = false\n[docker]\nenabled = false\n\
         [admin]\nlisten = \"127.0.0.1:{admin_port}\"\n",
        dir.emf_destination()
    );
    let mut agent = Agent::start(&dir, &config);
    agent.wait_for_message("agent started");
    // Ready and healthy first (one sample in).
    let deadline = Instant::now() + CLOSE_LIMIT;
    while get(admin_port, "/healthz").0 != 200 {
        assert!(Instant::now() < deadline, "{}", agent.logs().text());
        thread::sleep(Duration::from_millis(100));
    }
    // The probes' connections give their slots back once their task ends.
    thread::sleep(Duration::from_millis(500));
    let idle: Vec<TcpStream> = (0..16)
        .map(|_| TcpStream::connect(("127.0.0.1", admin_port)).unwrap())
        .collect();
    thread::sleep(Duration::from_millis(300));
    let (code, _, stderr) = run_to_exit(&[
        "healthcheck",
        "--config",
        agent.config_file().to_str().unwrap(),
    ]);
    assert_eq!(code, Some(0), "{stderr}");
    let stopped = agent.stop().success();
    assert_eq!(
        stopped.logs.final_counter("admin_connections_evicted"),
        1,
        "{}",
        stopped.logs.text()
    );
    drop(idle);
}

/// Two Host headers (RFC 9112: 400), `Connection: host` (Host must still reach the copy) and
/// CONNECT (a gateway is not a forward proxy): none reaches the copy as it came.
#[test]
fn duplicate_host_connection_naming_host_and_connect_are_not_passed_on() {
    let (copy, seen) = echo_copy();
    let fd = FrontDoor::start(&format!(
        "[[proxy.upstream]]\ncomponent = \"model\"\nurl = \"http://{copy}\"\n"
    ));
    let (status, response) = exchange(
        fd.addr,
        "GET /a HTTP/1.1\r\nHost: one.example\r\nHost: two.example\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(status, 400, "{response}");
    assert!(response.contains("more than one Host header"), "{response}");

    let (status, response) = exchange(
        fd.addr,
        "CONNECT model.example:443 HTTP/1.1\r\nHost: model.example:443\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(status, 405, "{response}");
    assert!(
        seen.lock().unwrap().is_empty(),
        "{:?}",
        seen.lock().unwrap()
    );

    let (status, response) = exchange(
        fd.addr,
        "GET /b HTTP/1.1\r\nHost: model.example\r\nConnection: host, close\r\n\r\n",
    );
    assert_eq!(status, 200, "{response}");
    let heads = seen.lock().unwrap().clone();
    assert_eq!(heads.len(), 1, "{heads:?}");
    assert!(
        heads[0]
            .to_ascii_lowercase()
            .contains("host: model.example\r\n"),
        "{heads:?}"
    );
    let stopped = fd.agent.stop().success();
    assert_eq!(stopped.logs.final_counter("proxy_bad_requests"), 2);
}

/// SIGTERM while a streamed answer is in flight: no new connection is taken, the stream runs
/// to its end, then the agent exits 0 with nothing cut. Before, the stream was cut after 500 ms.
#[test]
fn sigterm_lets_a_streamed_answer_finish_and_refuses_new_connections_while_draining() {
    const CHUNKS: usize = 12;
    let copy = streaming_copy(CHUNKS, Duration::from_millis(250));
    let fd = FrontDoor::start(&format!(
        "drain_timeout_ms = 30000\n\
         [[proxy.upstream]]\ncomponent = \"model\"\nurl = \"http://{copy}\"\n"
    ));
    let mut client = TcpStream::connect(fd.addr).unwrap();
    client
        .write_all(
            b"POST /invocations-response-stream HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n",
        )
        .unwrap();
    // The answer has started.
    let mut first = [0u8; 64];
    client.set_read_timeout(Some(CLOSE_LIMIT)).unwrap();
    let n = client.read(&mut first).unwrap();
    assert!(first[..n].starts_with(b"HTTP/1.1 200"));

    fd.agent.signal(libc::SIGTERM);
    // The listener closes: a new client is refused (or closed without an answer).
    let deadline = Instant::now() + CLOSE_LIMIT;
    loop {
        match TcpStream::connect(fd.addr) {
            Err(_) => break,
            Ok(mut c) => {
                let _ = c.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n");
                if read_until_closed(&mut c, Duration::from_secs(2)).is_ok_and(|got| got.is_empty())
                {
                    break;
                }
            }
        }
        assert!(Instant::now() < deadline, "still accepting while draining");
        thread::sleep(Duration::from_millis(20));
    }
    let rest = read_until_closed(&mut client, CLOSE_LIMIT).unwrap();
    let body = String::from_utf8_lossy(&rest);
    assert!(
        body.contains(&format!("data: token {}", CHUNKS - 1)) && body.ends_with("0\r\n\r\n"),
        "the stream ran to its end: {body:?}"
    );
    let stopped = fd.agent.wait_exit().success();
    let logs = &stopped.logs;
    assert_eq!(
        logs.final_counter("proxy_requests_cut"),
        0,
        "{}",
        logs.text()
    );
    assert!(logs.find_message("draining the front door").is_some());
}

/// A full disk under the EMF file (`/dev/full`: every write fails with ENOSPC): each failed write
/// is counted and logged and retried, what is left at the stop is dropped, counted, nothing is
/// claimed written, and the agent exits 0.
#[test]
fn a_full_disk_under_the_emf_file_is_counted_and_the_agent_runs_on() {
    let dir = Workdir::new();
    let config = "[endpoint]\nname = \"hostile\"\ninstance_id = \"i-hostile\"\n\
         [metrics]\npublish_frequency_seconds = 10\n\
         [output]\nemf_destination = \"file:/dev/full\"\n\
         [gpu]\nenabled = false\n[docker]\nenabled = false\n[admin]\nenabled = false\n";
    let mut agent = Agent::start(&dir, config);
    agent.wait_for_message("agent started");
    thread::sleep(Duration::from_millis(1500));
    let stopped = agent.stop().success();
    let logs = &stopped.logs;
    // Retried with backoff until the stop, then dropped, counted; how many windows and retries
    // depends on the wall clock.
    assert!(
        logs.final_counter("sink_write_errors") >= 1,
        "{}",
        logs.text()
    );
    assert!(
        logs.final_counter("emf_documents_dropped") >= 1,
        "{}",
        logs.text()
    );
    assert_eq!(
        logs.final_counter("emf_documents_written"),
        0,
        "{}",
        logs.text()
    );
    assert!(
        logs.find_message("EMF write failed")
            .is_some_and(|l| l.contains("os error 28")),
        "{}",
        logs.text()
    );
}
