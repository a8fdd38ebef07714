//! Hostile input and clumsy operators (issue 14): what an attacker on the front door, a bad file
//! or a mistyped configuration can do to the built agent, each tried on loopback. Every test
//! here has a row in docs/reliability.md.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use common::agent::{run_to_exit, Agent, Workdir};

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

#[allow(dead_code)]
fn send(stream: &mut TcpStream, bytes: &[u8]) {
    stream.write_all(bytes).unwrap();
}
