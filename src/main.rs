//! The thin checklist: parse the command line, load and validate the configuration before any
//! runtime exists, run until a signal, exit with a status that says what happened.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use endpoint_metrics_agent::config::{Config, DEFAULT_CONFIG_PATH, EXIT_CONFIG};
use endpoint_metrics_agent::plan::{plan, HostShape};
use endpoint_metrics_agent::sources::snapshot;
use endpoint_metrics_agent::{admin, agent, cost, dashboard, logging, top};

#[derive(Parser)]
#[command(
    name = "endpoint-metrics-agent",
    version,
    about = "SageMaker-style enhanced metrics for GPU inference hosts"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the agent: sample, aggregate per window, publish.
    Run {
        /// The configuration file.
        #[arg(long, default_value = DEFAULT_CONFIG_PATH)]
        config: PathBuf,
    },
    /// List the metric series this host will publish, the requests per month and the estimated
    /// CloudWatch cost per month.
    Plan {
        /// The configuration file.
        #[arg(long, default_value = DEFAULT_CONFIG_PATH)]
        config: PathBuf,
        /// Number of GPUs (default: what the agent finds on this host).
        #[arg(long)]
        gpus: Option<u32>,
        /// Number of model-copy containers (default: what the agent finds on this host).
        #[arg(long)]
        containers: Option<u32>,
        /// Number of inference components the containers belong to (default: one per container).
        #[arg(long)]
        components: Option<u32>,
    },
    /// Ask the running agent's admin endpoint for /healthz (Docker's HEALTHCHECK): exit 0 when
    /// healthy, 1 when not or unreachable, 78 when the configuration is invalid.
    Healthcheck {
        /// The configuration file (its `[admin] listen` is asked).
        #[arg(long, default_value = DEFAULT_CONFIG_PATH)]
        config: PathBuf,
    },
    /// Print how the instance's price splits between the inference components now: copies, GPUs,
    /// USD per hour and share of the instance per component, and the unallocated (idle) GPUs.
    /// Exit 78 when the configuration is invalid or gives no price.
    Cost {
        /// The configuration file.
        #[arg(long, default_value = DEFAULT_CONFIG_PATH)]
        config: PathBuf,
    },
    /// Print a CloudWatch dashboard body (JSON) for the configured endpoint and the components
    /// found now (or named), on the metrics this host publishes; `--put NAME` saves it with
    /// PutDashboard instead (standard AWS credential chain and Region).
    Dashboard {
        /// The configuration file.
        #[arg(long, default_value = DEFAULT_CONFIG_PATH)]
        config: PathBuf,
        /// An inference component to chart (repeat for more; default: those found now).
        #[arg(long = "component")]
        components: Vec<String>,
        /// GPUs per instance (default: what NVML shows now).
        #[arg(long)]
        gpus: Option<u32>,
        /// Save the body as this dashboard with PutDashboard.
        #[arg(long)]
        put: Option<String>,
        /// Print the widget list instead of the body.
        #[arg(long)]
        list: bool,
    },
    /// A live view of the running agent (its admin endpoint's /snapshot), refreshed every
    /// sample: `s` sorts, `r` reverses, `q` quits. Piped, it prints one snapshot and exits.
    Top {
        /// The configuration file (its `[admin] listen` is read).
        #[arg(long, default_value = DEFAULT_CONFIG_PATH)]
        config: PathBuf,
    },
    /// Validate a configuration file and print a summary of the effective settings.
    CheckConfig {
        /// The configuration file.
        #[arg(long, default_value = DEFAULT_CONFIG_PATH)]
        config: PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::CheckConfig { config } => match Config::load(&config) {
            Ok(c) => {
                // check-config never runs the pipeline, so stdout is free for the summary.
                println!("{} is valid\n{}", config.display(), c.summary());
                println!("{}", cost::describe(&c));
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::from(EXIT_CONFIG as u8)
            }
        },
        Command::Plan {
            config,
            gpus,
            containers,
            components,
        } => match Config::load(&config) {
            Ok(c) => {
                // What the agent's own collectors find on this host now.
                let found = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(runtime) => HostShape::found(&runtime.block_on(snapshot(&c))),
                    Err(e) => {
                        eprintln!("error: cannot build the async runtime: {e}");
                        return ExitCode::FAILURE;
                    }
                };
                let containers = containers.unwrap_or(found.containers);
                let shape = HostShape {
                    gpus: gpus.unwrap_or(found.gpus),
                    containers,
                    components: components.unwrap_or(if containers == found.containers {
                        found.components
                    } else {
                        containers
                    }),
                };
                // A report for a person, asked for explicitly: stdout.
                #[allow(clippy::print_stdout)]
                {
                    print!("{}", plan(&c, &shape));
                }
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::from(EXIT_CONFIG as u8)
            }
        },
        Command::Cost { config } => cost_report(&config),
        Command::Dashboard {
            config,
            components,
            gpus,
            put,
            list,
        } => ExitCode::from(dashboard::run(&dashboard::Args {
            config,
            components,
            gpus,
            put,
            list,
        })),
        Command::Top { config } => ExitCode::from(top::run(&config)),
        Command::Healthcheck { config } => match admin::healthcheck(&config) {
            Ok(()) => ExitCode::SUCCESS,
            Err(code) => ExitCode::from(code),
        },
        Command::Run { config: path } => {
            let config = match Config::load(&path) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("error: {e}");
                    return ExitCode::from(EXIT_CONFIG as u8);
                }
            };
            logging::init(&config.log);
            let runtime = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(r) => r,
                Err(e) => {
                    tracing::error!(error = %e, "cannot build the async runtime");
                    return ExitCode::FAILURE;
                }
            };
            match runtime.block_on(agent::run(config, path, shutdown_signal())) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    tracing::error!(error = format!("{e:#}"), "agent failed");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

/// `cost`: the split of the instance's price from what the agent sees now.
fn cost_report(path: &std::path::Path) -> ExitCode {
    let config = match Config::load(path) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(EXIT_CONFIG as u8);
        }
    };
    let price = match cost::instance_price(&config) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("error: no price, so no cost: {e}");
            return ExitCode::from(EXIT_CONFIG as u8);
        }
    };
    let found = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime.block_on(snapshot(&config)),
        Err(e) => {
            eprintln!("error: cannot build the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match cost::report::report(price, &found.devices, &found.inventory) {
        Some(report) => {
            // A report for a person, asked for explicitly: stdout.
            #[allow(clippy::print_stdout)]
            {
                print!("{report}");
            }
            ExitCode::SUCCESS
        }
        None => {
            eprintln!("error: no GPUs to divide the price by: NVML shows none and neither the price table nor [cost] gpus_per_instance gives a count");
            ExitCode::from(EXIT_CONFIG as u8)
        }
    }
}

/// Completes on SIGTERM or SIGINT.
async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        tracing::error!("cannot install signal handlers; stop with SIGKILL");
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => tracing::info!(signal = "SIGTERM", "stopping"),
        _ = int.recv() => tracing::info!(signal = "SIGINT", "stopping"),
    }
}
