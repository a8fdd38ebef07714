//! SIGHUP reloads with a valid and an invalid file, checked in the EMF the agent writes, its
//! logs and its counters.

use std::time::{Duration, Instant};

use crate::common::agent::{
    admin_metric, free_port, get, namespace, now_ms, timestamp_ms as timestamp, Workdir,
};
use crate::{config_text, sample_count, start, WAIT};

#[test]
fn reload_with_a_valid_file_changes_the_next_window_and_keeps_the_current_one() {
    let dir = Workdir::new();
    let port = free_port();
    let self_metrics = |ns: &str| format!("[self_metrics]\nenabled = true\nnamespace = \"{ns}\"\n");
    let mut agent = start(
        &dir,
        &config_text(&dir, port, "Ops/Before", &self_metrics("OpsAgent/Before")),
    );
    let first = agent.wait_for_document("a first window", |d| namespace(d) == "Ops/Before");

    // New namespaces and log level apply now; a new publish frequency needs a restart.
    let new = config_text(&dir, port, "Ops/After", &self_metrics("OpsAgent/After")).replace(
        "publish_frequency_seconds = 10",
        "publish_frequency_seconds = 30",
    ) + "[log]\nlevel = \"debug\"\n";
    dir.write("agent.toml", &new);
    let hup_ms = now_ms();
    agent.signal(libc::SIGHUP);
    let reloaded = agent.wait_for_message("configuration reloaded");
    assert!(
        reloaded.contains("metrics.endpoints_namespace"),
        "{reloaded}"
    );
    assert!(reloaded.contains("self_metrics.namespace"), "{reloaded}");
    assert!(reloaded.contains("log.level"), "{reloaded}");
    // The new level is in force: the reload's own debug line is there.
    agent.wait_for_message("effective configuration after reload");
    let restart = agent.wait_for_message("need restart");
    assert!(
        restart.contains("metrics.publish_frequency_seconds"),
        "{restart}"
    );

    // The window that was open at SIGHUP (ticks W+1 s ..= W+10 s) is published whole, under the
    // new namespace: every host sample the agent took in it is there.
    let window = (hup_ms - 1) / 10_000 * 10_000;
    assert!(window > timestamp(&first) || hup_ms % 10_000 == 0);
    let host = agent.wait_for_document("the reload window, host", |d| {
        timestamp(d) == window && d.get("MemoryUtilization").is_some()
    });
    assert_eq!(namespace(&host), "Ops/After", "{host}");
    let agent_doc = agent.wait_for_document("the reload window, agent", |d| {
        timestamp(d) == window && d.get("SamplesTaken").is_some()
    });
    assert_eq!(namespace(&agent_doc), "OpsAgent/After");
    assert_eq!(agent_doc["InstanceId"], "i-ops-test");
    let taken = agent_doc["SamplesTaken"]
        .as_f64()
        .or_else(|| agent_doc["SamplesTaken"][0].as_f64())
        .unwrap();
    assert!(taken >= 1.0);
    assert_eq!(
        sample_count(&host, "MemoryUtilization") as f64,
        taken,
        "the reload window lost samples: {host}"
    );
    // The publish frequency did not change (needs restart): the next window is 10 s later.
    agent.wait_for_document("the window after", |d| timestamp(d) == window + 10_000);
    assert!(agent
        .documents()
        .iter()
        .filter(|d| timestamp(d) < window)
        .all(|d| namespace(d).ends_with("/Before")));
    assert_eq!(
        admin_metric(port, "endpoint_metrics_agent_config_reloads_total"),
        1.0
    );
    let logs = agent.stop().success().logs;
    assert_eq!(logs.final_counter("config_reloads"), 1);
    assert_eq!(logs.final_counter("config_reloads_rejected"), 0);
}

#[test]
fn reload_with_an_invalid_file_keeps_the_running_configuration() {
    let dir = Workdir::new();
    let port = free_port();
    let good = config_text(&dir, port, "Ops/Good", "");
    let mut agent = start(&dir, &good);
    agent.wait_for_document("a first window", |d| namespace(d) == "Ops/Good");

    // Valid TOML, invalid value: CloudWatch reserves AWS/ namespaces.
    dir.write("agent.toml", &good.replace("Ops/Good", "AWS/Bad"));
    let hup_ms = now_ms();
    agent.signal(libc::SIGHUP);
    let rejected = agent.wait_for_message("reload rejected");
    assert!(
        rejected.contains("metrics.endpoints_namespace"),
        "{rejected}"
    );
    assert!(rejected.contains("AWS/"), "{rejected}");
    // Not TOML at all.
    dir.write("agent.toml", "[endpoint\nname = ");
    agent.signal(libc::SIGHUP);
    let deadline = Instant::now() + WAIT;
    while agent.logs().count_messages("reload rejected") < 2 {
        assert!(Instant::now() < deadline, "{}", agent.logs().text());
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(agent.logs().count_messages("configuration reloaded"), 0);

    // The windows after the failed reloads are still published, under the old namespace.
    let window = (hup_ms - 1) / 10_000 * 10_000;
    agent.wait_for_document("a window after the reloads", |d| timestamp(d) > window);
    let docs = agent.documents();
    assert!(docs.iter().all(|d| namespace(d) == "Ops/Good"), "{docs:#?}");

    assert_eq!(
        admin_metric(port, "endpoint_metrics_agent_config_reloads_rejected_total"),
        2.0
    );
    assert_eq!(get(port, "/healthz").0, 200);
    let logs = agent.stop().success().logs;
    assert_eq!(logs.final_counter("config_reloads_rejected"), 2);
    assert_eq!(logs.final_counter("config_reloads"), 0);
}
