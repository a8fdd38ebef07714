//! Logs go to stderr through `tracing`, as text or JSON; stdout carries only EMF.

use std::sync::OnceLock;

use tracing_subscriber::EnvFilter;

use crate::config::{LogConfig, LogFormat, LogLevel};

type SetFilter = Box<dyn Fn(EnvFilter) -> Result<(), String> + Send + Sync>;

/// Replaces the level filter of the installed subscriber (for a reload); set by [`init`].
static SET_FILTER: OnceLock<SetFilter> = OnceLock::new();

/// Installs the global subscriber. `RUST_LOG`, when set, overrides the configured level.
pub fn init(config: &LogConfig) {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(config.level.as_str()));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let result = match config.format {
        LogFormat::Text => {
            let builder = builder.with_ansi(false).with_filter_reloading();
            let handle = builder.reload_handle();
            builder.try_init().map(|()| {
                let _ = SET_FILTER.set(Box::new(move |f| {
                    handle.reload(f).map_err(|e| e.to_string())
                }));
            })
        }
        LogFormat::Json => {
            let builder = builder.json().flatten_event(true).with_filter_reloading();
            let handle = builder.reload_handle();
            builder.try_init().map(|()| {
                let _ = SET_FILTER.set(Box::new(move |f| {
                    handle.reload(f).map_err(|e| e.to_string())
                }));
            })
        }
    };
    // A subscriber already installed (tests) is fine.
    let _ = result;
}

/// Applies a new `log.level` at run time. With `RUST_LOG` set, that stays in force.
pub fn set_level(level: LogLevel) -> Result<(), String> {
    if std::env::var_os("RUST_LOG").is_some() {
        return Err("RUST_LOG is set and overrides log.level".into());
    }
    match SET_FILTER.get() {
        Some(set) => set(EnvFilter::new(level.as_str())),
        None => Err("no reloadable log subscriber installed".into()),
    }
}
