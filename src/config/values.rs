//! The configuration's values that are more than a number or a word: each is parsed once, at
//! load, into its type (serde `try_from` or `deserialize_with`), so the error names the key and
//! nothing later parses the text again.

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;

use serde::{de::Error as _, Deserialize, Deserializer, Serialize};

use crate::catalog::DEFAULT_ENDPOINTS_NAMESPACE;
use crate::encode::limits::{
    MAX_DIMENSION_VALUE_CHARS, MAX_NAMESPACE_CHARS, RESERVED_NAMESPACE_PREFIX,
};

/// Where EMF documents go: `output.emf_destination`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(try_from = "String", into = "String")]
pub enum EmfDestination {
    Stdout,
    File(PathBuf),
    /// "host:port" (the port is 1 to 65535; the host is resolved when connecting).
    Tcp(String),
    /// "host:port", as for `Tcp`.
    Udp(String),
    CloudWatchLogs,
}

impl EmfDestination {
    pub fn parse(text: &str) -> Result<Self, String> {
        let allowed = "allowed: \"stdout\", \"file:/path\", \"tcp://host:port\", \"udp://host:port\", \"cloudwatch_logs\"";
        if text == "stdout" {
            return Ok(EmfDestination::Stdout);
        }
        if text == "cloudwatch_logs" {
            return Ok(EmfDestination::CloudWatchLogs);
        }
        if let Some(path) = text.strip_prefix("file:") {
            if path.is_empty() {
                return Err(format!("\"{text}\" names no file; {allowed}"));
            }
            return Ok(EmfDestination::File(path.into()));
        }
        for (prefix, udp) in [("tcp://", false), ("udp://", true)] {
            if let Some(addr) = text.strip_prefix(prefix) {
                let valid = addr.rsplit_once(':').is_some_and(|(host, port)| {
                    !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p != 0)
                });
                if !valid {
                    return Err(format!("\"{text}\" is not host:port; {allowed}"));
                }
                let addr = addr.to_string();
                return Ok(if udp {
                    EmfDestination::Udp(addr)
                } else {
                    EmfDestination::Tcp(addr)
                });
            }
        }
        Err(format!("\"{text}\" is not a destination; {allowed}"))
    }
}

impl TryFrom<String> for EmfDestination {
    type Error = String;
    fn try_from(text: String) -> Result<Self, String> {
        EmfDestination::parse(&text)
    }
}

/// As written in the configuration file.
impl fmt::Display for EmfDestination {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EmfDestination::Stdout => f.write_str("stdout"),
            EmfDestination::File(path) => write!(f, "file:{}", path.display()),
            EmfDestination::Tcp(addr) => write!(f, "tcp://{addr}"),
            EmfDestination::Udp(addr) => write!(f, "udp://{addr}"),
            EmfDestination::CloudWatchLogs => f.write_str("cloudwatch_logs"),
        }
    }
}

impl From<EmfDestination> for String {
    fn from(destination: EmfDestination) -> String {
        destination.to_string()
    }
}

/// Where the `InstanceId` dimension comes from: `endpoint.instance_id`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(try_from = "String", into = "String")]
pub enum InstanceIdSetting {
    /// "auto": EC2 instance metadata (IMDSv2), else the hostname.
    #[default]
    Auto,
    /// Any other value: used as it is.
    Given(String),
}

impl TryFrom<String> for InstanceIdSetting {
    type Error = String;
    fn try_from(text: String) -> Result<Self, String> {
        match text.as_str() {
            "auto" => Ok(InstanceIdSetting::Auto),
            t if t.trim().is_empty() => Err("must not be empty; use \"auto\" to look it up".into()),
            t => {
                validate_dimension_value(t)?;
                Ok(InstanceIdSetting::Given(text))
            }
        }
    }
}

/// As written in the configuration file.
impl fmt::Display for InstanceIdSetting {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            InstanceIdSetting::Auto => f.write_str("auto"),
            InstanceIdSetting::Given(id) => f.write_str(id),
        }
    }
}

impl From<InstanceIdSetting> for String {
    fn from(setting: InstanceIdSetting) -> String {
        setting.to_string()
    }
}

/// A static upstream's base URL, "http://host:port" (no path, query or user): `proxy.upstream.url`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(try_from = "String", into = "String")]
pub struct UpstreamUrl {
    /// As written.
    url: String,
    /// "host:port", as the request URI's authority and the address to connect to.
    authority: String,
}

impl UpstreamUrl {
    pub fn parse(url: &str) -> Result<Self, String> {
        let allowed = "allowed: \"http://host:port\", e.g. \"http://127.0.0.1:9001\"";
        let rest = url
            .strip_prefix("http://")
            .ok_or_else(|| format!("\"{url}\" is not plain http; {allowed}"))?;
        let rest = rest.strip_suffix('/').unwrap_or(rest);
        let authority: http::uri::Authority = rest
            .parse()
            .map_err(|_| format!("\"{url}\" has no valid host and port; {allowed}"))?;
        if rest.contains(['/', '?', '#', '@']) || authority.host().is_empty() {
            return Err(format!(
                "\"{url}\" must have no path, query or user; {allowed}"
            ));
        }
        match authority.port_u16() {
            Some(p) if p != 0 => Ok(UpstreamUrl {
                url: url.to_string(),
                authority: authority.as_str().to_string(),
            }),
            _ => Err(format!("\"{url}\" names no port; {allowed}")),
        }
    }

    /// "host:port".
    pub fn authority(&self) -> &str {
        &self.authority
    }
}

impl TryFrom<String> for UpstreamUrl {
    type Error = String;
    fn try_from(url: String) -> Result<Self, String> {
        UpstreamUrl::parse(&url)
    }
}

impl From<UpstreamUrl> for String {
    fn from(url: UpstreamUrl) -> String {
        url.url
    }
}

/// A static scrape target, "http://host:port/path" (the path defaults to "/metrics"):
/// `scrape.target.url`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(try_from = "String", into = "String")]
pub struct ScrapeUrl {
    /// As written.
    url: String,
    /// "host:port".
    authority: String,
    /// Path and query, starting with "/".
    path: String,
}

impl ScrapeUrl {
    pub fn parse(url: &str) -> Result<Self, String> {
        let rest = url.strip_prefix("http://").unwrap_or(url);
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, super::DEFAULT_SCRAPE_PATH),
        };
        let scheme = if url.starts_with("http://") {
            "http://"
        } else {
            ""
        };
        let base = UpstreamUrl::parse(&format!("{scheme}{authority}")).map_err(|reason| {
            reason.replace(
                "allowed: \"http://host:port\", e.g. \"http://127.0.0.1:9001\"",
                "allowed: \"http://host:port/path\", e.g. \"http://127.0.0.1:8000/metrics\"",
            )
        })?;
        Ok(ScrapeUrl {
            url: url.to_string(),
            authority: base.authority().to_string(),
            path: path.to_string(),
        })
    }

    /// "host:port".
    pub fn authority(&self) -> &str {
        &self.authority
    }

    /// Path and query, starting with "/".
    pub fn path(&self) -> &str {
        &self.path
    }
}

impl TryFrom<String> for ScrapeUrl {
    type Error = String;
    fn try_from(url: String) -> Result<Self, String> {
        ScrapeUrl::parse(&url)
    }
}

impl From<ScrapeUrl> for String {
    fn from(url: ScrapeUrl) -> String {
        url.url
    }
}

impl fmt::Display for UpstreamUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.url)
    }
}

/// `deserialize_with` for a listening address ("ip:port"), with an error that says what is
/// allowed (serde's own says only "invalid socket address syntax").
pub fn listen_address<'de, D: Deserializer<'de>>(deserializer: D) -> Result<SocketAddr, D::Error> {
    let text = String::deserialize(deserializer)?;
    text.parse().map_err(|_| {
        D::Error::custom(format!(
            "\"{text}\" is not an IP address and port; allowed: e.g. \"127.0.0.1:9464\" or \"0.0.0.0:8080\""
        ))
    })
}

/// `deserialize_with` for a value that becomes a dimension value (an inference component's
/// name): trimmed, then as [`validate_dimension_value`].
pub fn dimension_value<'de, D: Deserializer<'de>>(deserializer: D) -> Result<String, D::Error> {
    let text = String::deserialize(deserializer)?;
    let trimmed = text.trim();
    validate_dimension_value(trimmed).map_err(D::Error::custom)?;
    Ok(trimmed.to_string())
}

/// A value CloudWatch accepts as a dimension value (PutMetricData `Dimension.Value`: "must
/// contain only ASCII characters and must include at least one non-whitespace character", 1 to
/// [`MAX_DIMENSION_VALUE_CHARS`]), and printable: a control character would also reach the logs
/// raw. A value outside this runs "healthy" and publishes nothing, so it is refused at load.
pub fn validate_dimension_value(value: &str) -> Result<(), String> {
    let chars = value.chars().count();
    if chars == 0 || chars > MAX_DIMENSION_VALUE_CHARS {
        return Err(format!(
            "must be 1 to {MAX_DIMENSION_VALUE_CHARS} characters (it has {chars})"
        ));
    }
    if let Some(c) = value.chars().find(|c| !(' '..='~').contains(c)) {
        return Err(format!(
            "{c:?} is not allowed; allowed: printable ASCII characters (CloudWatch dimension values are ASCII)"
        ));
    }
    if value.trim().is_empty() {
        return Err("must have a character other than spaces".into());
    }
    Ok(())
}

/// The first control character in any text value of a configuration (serialized as JSON), with
/// its key: a carriage return, line feed or escape in a name would reach the logs raw and could
/// forge log lines. One walk over every key, so a key added later is covered too.
pub fn find_control_character(value: &serde_json::Value, key: &mut String) -> Option<char> {
    match value {
        serde_json::Value::String(text) => text.chars().find(|c| c.is_control()),
        serde_json::Value::Array(items) => {
            let len = key.len();
            for (i, item) in items.iter().enumerate() {
                key.push_str(&format!("[{i}]"));
                if let Some(c) = find_control_character(item, key) {
                    return Some(c);
                }
                key.truncate(len);
            }
            None
        }
        serde_json::Value::Object(fields) => {
            let len = key.len();
            for (name, item) in fields {
                if !key.is_empty() {
                    key.push('.');
                }
                key.push_str(name);
                if let Some(c) = find_control_character(item, key) {
                    return Some(c);
                }
                key.truncate(len);
            }
            None
        }
        _ => None,
    }
}

/// A namespace CloudWatch accepts for custom metrics.
pub fn validate_namespace(namespace: &str) -> Result<(), String> {
    if namespace.is_empty() || namespace.chars().count() > MAX_NAMESPACE_CHARS {
        return Err(format!("must be 1 to {MAX_NAMESPACE_CHARS} characters"));
    }
    if namespace.starts_with(RESERVED_NAMESPACE_PREFIX) {
        return Err(format!(
            "\"{namespace}\" starts with \"{RESERVED_NAMESPACE_PREFIX}\", which CloudWatch reserves; allowed: any other namespace, e.g. \"{DEFAULT_ENDPOINTS_NAMESPACE}\""
        ));
    }
    if namespace.starts_with(':')
        || !namespace
            .chars()
            .all(|c| c.is_ascii() && !c.is_ascii_control())
    {
        return Err("allowed: printable ASCII characters, not starting with ':'".into());
    }
    Ok(())
}

/// A CloudWatch Logs group (`[.-_/#A-Za-z0-9]`) or stream (anything but `:` and `*`) name.
pub fn validate_log_name(name: &str, max: usize, group: bool) -> Result<(), String> {
    if name.is_empty() || name.chars().count() > max {
        return Err(format!("must be 1 to {max} characters"));
    }
    let ok = if group {
        name.chars()
            .all(|c| c.is_ascii_alphanumeric() || "._-/#".contains(c))
    } else {
        !name.contains([':', '*'])
    };
    if !ok {
        return Err(if group {
            "allowed characters: letters, digits, '.', '_', '-', '/', '#'".into()
        } else {
            "must not contain ':' or '*'".into()
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn destinations_parse_and_print_as_written() {
        assert_eq!(
            EmfDestination::parse("file:/tmp/x").unwrap(),
            EmfDestination::File("/tmp/x".into())
        );
        assert_eq!(
            EmfDestination::parse("tcp://127.0.0.1:25888").unwrap(),
            EmfDestination::Tcp("127.0.0.1:25888".into())
        );
        assert_eq!(
            EmfDestination::parse("udp://localhost:25888").unwrap(),
            EmfDestination::Udp("localhost:25888".into())
        );
        assert!(EmfDestination::parse("udp://localhost:0").is_err());
        assert!(EmfDestination::parse("file:").is_err());
        assert!(EmfDestination::parse("http://x").is_err());
        for text in [
            "stdout",
            "cloudwatch_logs",
            "file:/tmp/x",
            "tcp://h:1",
            "udp://h:2",
        ] {
            assert_eq!(EmfDestination::parse(text).unwrap().to_string(), text);
        }
    }

    #[test]
    fn static_urls_must_be_plain_http_with_a_port() {
        let url = UpstreamUrl::parse("http://127.0.0.1:9001").unwrap();
        assert_eq!(url.authority(), "127.0.0.1:9001");
        assert_eq!(url.to_string(), "http://127.0.0.1:9001");
        assert_eq!(
            UpstreamUrl::parse("http://model:80/").unwrap().authority(),
            "model:80"
        );
        for bad in [
            "https://x:1",
            "http://x",
            "http://x:0",
            "http://x:1/path",
            "http://u@x:1",
            "x:1",
            "http://:1",
        ] {
            assert!(UpstreamUrl::parse(bad).is_err(), "{bad}");
        }
    }
}
