//! The config loader: any text is a valid configuration or a ConfigError naming a key, never a
//! panic; what loads holds only dimension values CloudWatch accepts and no control character.
#![no_main]

use std::path::Path;

use endpoint_metrics_agent::config::values::validate_dimension_value;
use endpoint_metrics_agent::config::{Config, InstanceIdSetting};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(config) = Config::parse(text, Path::new("fuzz.toml")) else {
        return;
    };
    for value in [&config.endpoint.name, &config.endpoint.variant] {
        assert!(validate_dimension_value(value).is_ok(), "{value:?}");
    }
    if let InstanceIdSetting::Given(id) = &config.endpoint.instance_id {
        assert!(validate_dimension_value(id).is_ok(), "{id:?}");
    }
    for upstream in &config.proxy.upstream {
        assert!(validate_dimension_value(&upstream.component).is_ok());
    }
    let json = serde_json::to_string(&config).expect("a loaded config serializes");
    assert!(!json.chars().any(|c| c.is_control()), "{json}");
});
