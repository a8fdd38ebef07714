//! The subcommands, each given the configuration `main` loaded and the runtime it built. All but
//! `run` are one-shot reports for a person who asked for them: they print to stdout (the report)
//! or stderr (what went wrong) and return the exit status. `run` logs through `tracing` instead.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use tokio::runtime::Runtime;

use crate::config::{preflight, Config, EXIT_CONFIG};
use crate::plan::HostShape;
use crate::sources::snapshot;
use crate::{admin, agent, cost, plan};

/// `run`: sample, aggregate per window and publish until `shutdown` completes.
pub fn run(
    config: Config,
    path: PathBuf,
    runtime: &Runtime,
    shutdown: impl Future<Output = ()>,
) -> ExitCode {
    // The same paths check-config checks: a path that cannot work is a configuration error (78,
    // not retried by the unit), not a failure at start (1, retried).
    if let Err(e) = preflight::check(&config, &path) {
        tracing::error!(error = %e, "configuration cannot run on this host");
        return ExitCode::from(EXIT_CONFIG);
    }
    match runtime.block_on(agent::run(config, path, shutdown)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = format!("{e:#}"), "agent failed");
            ExitCode::FAILURE
        }
    }
}

/// `check-config`: the file is valid (or `main` would not have got this far); prints the
/// effective settings.
#[allow(
    clippy::print_stdout,
    reason = "check-config never runs the pipeline, so stdout is free for the summary"
)]
pub fn check_config(path: &Path, config: &Config) -> ExitCode {
    if let Err(e) = preflight::check(config, path) {
        #[allow(
            clippy::print_stderr,
            reason = "check-config's report of what went wrong"
        )]
        {
            eprintln!("error: {e}");
        }
        return ExitCode::from(EXIT_CONFIG);
    }
    println!("{} is valid\n{}", path.display(), config.summary());
    println!("{}", cost::describe(config));
    ExitCode::SUCCESS
}

/// What the command line says about the host `plan` estimates for; unset: what the agent finds.
#[derive(Clone, Copy, Debug, Default)]
pub struct ShapeOverrides {
    pub gpus: Option<u32>,
    pub containers: Option<u32>,
    pub components: Option<u32>,
    /// `plan --otlp-price-per-gb`.
    pub otlp_price_per_gb: Option<f64>,
}

/// `plan`: the series this host publishes and the CloudWatch bill per month.
#[allow(
    clippy::print_stdout,
    reason = "a report for a person, asked for explicitly; no pipeline runs"
)]
pub fn plan(config: &Config, runtime: &Runtime, overrides: ShapeOverrides) -> ExitCode {
    // What the agent's own collectors find on this host now.
    let found = plan::HostShape::found(&runtime.block_on(snapshot(config)));
    let containers = overrides.containers.unwrap_or(found.containers);
    let shape = HostShape {
        gpus: overrides.gpus.unwrap_or(found.gpus),
        containers,
        components: overrides
            .components
            .unwrap_or(if containers == found.containers {
                found.components
            } else {
                containers
            }),
    };
    let price = overrides
        .otlp_price_per_gb
        .unwrap_or(plan::ASSUMED_OTEL_PRICE_PER_GB_INGESTED);
    print!("{}", plan::plan_priced(config, &shape, price));
    ExitCode::SUCCESS
}

/// `cost`: how the instance's price splits between the inference components now.
#[allow(
    clippy::print_stdout,
    clippy::print_stderr,
    reason = "a report for a person, asked for explicitly; no pipeline runs and no logger is set up"
)]
pub fn cost(config: &Config, runtime: &Runtime) -> ExitCode {
    let price = match cost::instance_price(config) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("error: no price, so no cost: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    let found = runtime.block_on(snapshot(config));
    match cost::report::report(price, &found.devices, &found.inventory) {
        Some(report) => {
            print!("{report}");
            ExitCode::SUCCESS
        }
        None => {
            eprintln!("error: no GPUs to divide the price by: NVML shows none and neither the price table nor [cost] gpus_per_instance gives a count");
            ExitCode::from(EXIT_CONFIG)
        }
    }
}

/// `healthcheck`: asks the running agent's admin endpoint for `/healthz` and says on stderr what
/// it answered: success when healthy, 1 when not or unreachable.
#[allow(
    clippy::print_stderr,
    reason = "Docker's HEALTHCHECK shows the command's output; no logger is set up"
)]
pub fn healthcheck(path: &Path, config: &Config) -> ExitCode {
    if !config.admin.enabled {
        eprintln!("error: [admin] enabled = false in {}", path.display());
        return ExitCode::FAILURE;
    }
    match admin::get(config.admin.listen, "/healthz") {
        Ok((200, body)) => {
            eprint!("200 {body}");
            ExitCode::SUCCESS
        }
        Ok((status, body)) => {
            eprint!("{status} {body}");
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("error: {}: {e}", config.admin.listen);
            ExitCode::FAILURE
        }
    }
}
