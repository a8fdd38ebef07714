//! The thin checklist: parse the command line, load and validate the configuration once (before
//! any runtime exists), build the runtime once, hand both to the subcommand, exit with the status
//! it returns.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use endpoint_metrics_agent::cli::{self, ShapeOverrides};
use endpoint_metrics_agent::config::{Config, DEFAULT_CONFIG_PATH, EXIT_CONFIG};
use endpoint_metrics_agent::{dashboard, logging, top};

/// mimalloc instead of glibc's malloc: the front door allocates and frees a few dozen small
/// blocks per request (header maps, buffers, futures), and glibc's malloc and free were 4-5 %
/// of its CPU (docs/performance.md, "Front door against nginx").
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

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
    /// CloudWatch bill per month.
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

impl Command {
    fn config_path(&self) -> &Path {
        match self {
            Command::Run { config }
            | Command::Plan { config, .. }
            | Command::Healthcheck { config }
            | Command::Cost { config }
            | Command::Dashboard { config, .. }
            | Command::Top { config }
            | Command::CheckConfig { config } => config,
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let path = cli.command.config_path().to_path_buf();
    let config = match load_config(&path) {
        Ok(config) => config,
        Err(status) => return status,
    };
    if matches!(cli.command, Command::Run { .. }) {
        logging::init(&config.log);
    }
    let runtime = match build_runtime() {
        Ok(runtime) => runtime,
        Err(status) => return status,
    };
    match cli.command {
        Command::Run { .. } => cli::run(config, path, &runtime, shutdown_signal()),
        Command::CheckConfig { .. } => cli::check_config(&path, &config),
        Command::Plan {
            gpus,
            containers,
            components,
            ..
        } => cli::plan(
            &config,
            &runtime,
            ShapeOverrides {
                gpus,
                containers,
                components,
            },
        ),
        Command::Cost { .. } => cli::cost(&config, &runtime),
        Command::Healthcheck { .. } => cli::healthcheck(&path, &config),
        Command::Dashboard {
            components,
            gpus,
            put,
            list,
            ..
        } => dashboard::run(
            &config,
            &runtime,
            &dashboard::Args {
                components,
                gpus,
                put,
                list,
            },
        ),
        Command::Top { .. } => top::run(&path, &config),
    }
}

/// Every subcommand starts here: an invalid file is one line on stderr (file, key, reason) and
/// exit status 78, before anything else happens.
#[allow(
    clippy::print_stderr,
    reason = "no logger exists yet: its settings are in the file being loaded"
)]
fn load_config(path: &Path) -> Result<Config, ExitCode> {
    Config::load(path).map_err(|e| {
        eprintln!("error: {e}");
        ExitCode::from(EXIT_CONFIG)
    })
}

/// One runtime, on this thread, for whichever subcommand runs (the front door builds its own).
#[allow(
    clippy::print_stderr,
    reason = "one-shot subcommands have no logger; this is their only way to say it"
)]
fn build_runtime() -> Result<tokio::runtime::Runtime, ExitCode> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| {
            eprintln!("error: cannot build the async runtime: {e}");
            ExitCode::FAILURE
        })
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
