//! `dashboard`: a CloudWatch dashboard body for the configured endpoint, on the agent's own
//! metric names and dimension sets, and `--put NAME` to save it with PutDashboard.
//!
//! Every widget row is checked against what `plan` says this configuration publishes from a host
//! of this shape (namespace, metric, dimension names): a row the host would not publish is left
//! out, and a widget left without rows is not added. So the dashboard shows what the host
//! publishes and nothing it does not; `tests/dashboard.rs` checks the body against `plan` again
//! from the outside.
//!
//! The "cluster details" widgets are the launch post's recipes written as metric math
//! (metrics-spec.md, "Data shape"): instances in service = `SampleCount` of
//! `CPUUtilizationNormalized {EndpointName, VariantName}` per period; GPUs in use = `SUM` of a
//! `SEARCH` over the six-key per-copy per-GPU `GPUUtilizationNormalized` series with
//! `SampleCount`; a component's cost per period = its GPUs in use x price / GPUs per instance /
//! (3600 / period), `RUNNING_SUM` for the total. Per-GPU and per-copy widgets `SEARCH` their
//! exact dimension sets, so copies and instances that come later show up without a new body.

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::process::ExitCode;

use serde_json::{json, Value};

use crate::catalog::{Dim, Metric};
use crate::config::Config;
use crate::plan::{plan, HostShape};

/// A dashboard holds at most 500 widgets (CloudWatch API reference, "Dashboard Body Structure
/// and Syntax").
pub const MAX_WIDGETS: usize = 500;
/// A graph holds at most 500 metrics and expressions (CloudWatch user guide, "Graph metrics":
/// "up to 500 metrics"); the per-component widgets hold a few rows per component.
pub const MAX_ROWS_PER_WIDGET: usize = 500;
/// Components named on one dashboard: the per-component cost widget holds two expressions and
/// the agent's figure per component, under [`MAX_ROWS_PER_WIDGET`] with room to spare.
pub const MAX_COMPONENTS: usize = 100;
/// The dashboard grid is 24 units wide; two graphs side by side.
const GRID_WIDTH: u32 = 24;
const GRAPH_WIDTH: u32 = 12;
const GRAPH_HEIGHT: u32 = 6;
const HEADING_HEIGHT: u32 = 1;

/// Why no body could be made.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DashboardError {
    #[error("{what} {value:?} contains a quote, which a SEARCH expression cannot hold")]
    Quote { what: &'static str, value: String },
    #[error("{0} components named; a dashboard holds at most {MAX_COMPONENTS}")]
    TooManyComponents(usize),
}

/// What the dashboard is for: the host's shape and the components to name.
#[derive(Clone, Debug, PartialEq)]
pub struct Target {
    /// GPUs on one instance (what NVML shows, or the price table's count).
    pub gpus: u32,
    /// The inference components to chart, in order.
    pub components: Vec<String>,
    /// The region the widgets read from.
    pub region: String,
}

/// One published (namespace, metric, dimension names sorted) as `plan` lists it.
type Published = BTreeSet<(String, String, Vec<String>)>;

/// What `config` publishes from a host of `target`'s shape, by names.
pub fn published(config: &Config, target: &Target) -> Published {
    let n = target.components.len() as u32;
    let shape = HostShape {
        gpus: target.gpus,
        containers: n,
        components: n,
    };
    plan(config, &shape)
        .series
        .into_iter()
        .map(|s| {
            let mut names: Vec<String> = s.dimensions.into_iter().map(|(n, _)| n).collect();
            names.sort();
            (s.namespace, s.metric, names)
        })
        .collect()
}

/// The dashboard body for `config` and `target`.
pub fn body(config: &Config, target: &Target) -> Result<Value, DashboardError> {
    if target.components.len() > MAX_COMPONENTS {
        return Err(DashboardError::TooManyComponents(target.components.len()));
    }
    let quoted = |what: &'static str, value: &str| {
        if value.contains(['"', '\'']) {
            Err(DashboardError::Quote {
                what,
                value: value.to_string(),
            })
        } else {
            Ok(())
        }
    };
    quoted("endpoint name", &config.endpoint.name)?;
    quoted("variant name", &config.endpoint.variant)?;
    for c in &target.components {
        quoted("component name", c)?;
    }
    let mut b = Builder::new(config, target);
    b.cluster_details();
    b.instance_and_gpus();
    b.gpu_health();
    b.copies();
    b.model_server();
    b.invocations();
    Ok(b.finish())
}

/// The dimension sets the widgets use, by catalog names.
const ENDPOINT: &[Dim] = &[Dim::EndpointName, Dim::VariantName];
const ENDPOINT_GPU: &[Dim] = &[
    Dim::EndpointName,
    Dim::VariantName,
    Dim::InstanceId,
    Dim::Gpu,
];
const COMPONENT: &[Dim] = &[Dim::InferenceComponentName];
const COPY: &[Dim] = &[
    Dim::EndpointName,
    Dim::VariantName,
    Dim::InstanceId,
    Dim::InferenceComponentName,
    Dim::ContainerId,
];
const COPY_GPU: &[Dim] = &[
    Dim::EndpointName,
    Dim::VariantName,
    Dim::InstanceId,
    Dim::ContainerId,
    Dim::InferenceComponentName,
    Dim::Gpu,
];

/// A model-server graph: its title, its default statistic, and each metric with the statistic
/// of its row.
type ServerGraph = (
    &'static str,
    &'static str,
    &'static [(Metric, &'static str)],
);

/// Which namespace a row reads.
#[derive(Copy, Clone)]
enum Ns {
    Endpoints,
    Components,
    Invocations,
}

struct Builder<'a> {
    config: &'a Config,
    target: &'a Target,
    published: Published,
    widgets: Vec<Value>,
    /// Where the next widget goes.
    x: u32,
    y: u32,
}

/// One widget being filled: its rows, and ids for expressions.
struct Graph {
    title: String,
    stat: &'static str,
    period: u64,
    rows: Vec<Value>,
}

impl Graph {
    fn new(title: impl Into<String>, stat: &'static str, period: u64) -> Graph {
        Graph {
            title: title.into(),
            stat,
            period,
            rows: Vec::new(),
        }
    }

    fn expression(&mut self, id: &str, label: &str, expression: String, visible: bool) {
        let mut row = json!({ "expression": expression, "id": id, "label": label });
        if !visible {
            row["visible"] = json!(false);
        }
        self.rows.push(row);
    }
}

impl<'a> Builder<'a> {
    fn new(config: &'a Config, target: &'a Target) -> Builder<'a> {
        Builder {
            config,
            target,
            published: published(config, target),
            widgets: Vec::new(),
            x: 0,
            y: 0,
        }
    }

    fn namespace(&self, ns: Ns) -> &'a str {
        match ns {
            Ns::Endpoints => &self.config.metrics.endpoints_namespace,
            Ns::Components => &self.config.metrics.components_namespace,
            Ns::Invocations => &self.config.proxy.namespace,
        }
    }

    fn dim(&self, d: Dim) -> &'a str {
        d.name(&self.config.gpu.dimension_name)
    }

    fn period(&self) -> u64 {
        self.config.metrics.publish_frequency_seconds
    }

    /// Whether the host publishes `metric` in `ns` under exactly the dimensions `dims`.
    fn publishes(&self, ns: Ns, metric: Metric, dims: &[Dim]) -> bool {
        let mut names: Vec<String> = dims.iter().map(|d| self.dim(*d).to_string()).collect();
        names.sort();
        self.published.contains(&(
            self.namespace(ns).to_string(),
            metric.name().to_string(),
            names,
        ))
    }

    /// A metric row on the endpoint's or a component's own dimension values; None when the host
    /// does not publish it.
    fn row(
        &self,
        ns: Ns,
        metric: Metric,
        component: Option<&str>,
        options: Value,
    ) -> Option<Value> {
        let dims = if component.is_some() {
            COMPONENT
        } else {
            ENDPOINT
        };
        if !self.publishes(ns, metric, dims) {
            return None;
        }
        let mut row = vec![json!(self.namespace(ns)), json!(metric.name())];
        match component {
            Some(c) => {
                row.extend([json!(self.dim(Dim::InferenceComponentName)), json!(c)]);
            }
            None => row.extend([
                json!(self.dim(Dim::EndpointName)),
                json!(self.config.endpoint.name),
                json!(self.dim(Dim::VariantName)),
                json!(self.config.endpoint.variant),
            ]),
        }
        if options.as_object().is_some_and(|o| !o.is_empty()) {
            row.push(options);
        }
        Some(Value::Array(row))
    }

    /// A `SEARCH` over exactly the dimension set `dims` of `metric`, on this endpoint (and one
    /// component); None when the host does not publish that set.
    fn search(
        &self,
        ns: Ns,
        metric: Metric,
        dims: &[Dim],
        component: Option<&str>,
        stat: &str,
        period: u64,
    ) -> Option<String> {
        if !self.publishes(ns, metric, dims) {
            return None;
        }
        let mut schema = self.namespace(ns).to_string();
        for d in dims {
            schema.push(',');
            schema.push_str(self.dim(*d));
        }
        let mut terms = format!(
            "MetricName=\"{}\" {}=\"{}\"",
            metric.name(),
            self.dim(Dim::EndpointName),
            self.config.endpoint.name
        );
        if let Some(c) = component {
            let _ = write!(terms, " {}=\"{c}\"", self.dim(Dim::InferenceComponentName));
        }
        Some(format!(
            "SEARCH('{{{schema}}} {terms}', '{stat}', {period})"
        ))
    }

    fn heading(&mut self, text: &str) {
        if self.x > 0 {
            self.x = 0;
            self.y += GRAPH_HEIGHT;
        }
        self.widgets.push(json!({
            "type": "text",
            "x": 0, "y": self.y, "width": GRID_WIDTH, "height": HEADING_HEIGHT,
            "properties": { "markdown": format!("## {text}") }
        }));
        self.y += HEADING_HEIGHT;
    }

    /// Adds `graph` if it has rows.
    fn add(&mut self, mut graph: Graph) {
        if graph.rows.is_empty() || self.widgets.len() >= MAX_WIDGETS {
            return;
        }
        graph.rows.truncate(MAX_ROWS_PER_WIDGET);
        self.widgets.push(json!({
            "type": "metric",
            "x": self.x, "y": self.y, "width": GRAPH_WIDTH, "height": GRAPH_HEIGHT,
            "properties": {
                "title": graph.title,
                "view": "timeSeries",
                "stacked": false,
                "region": self.target.region,
                "stat": graph.stat,
                "period": graph.period,
                "metrics": graph.rows,
            }
        }));
        self.x += GRAPH_WIDTH;
        if self.x >= GRID_WIDTH {
            self.x = 0;
            self.y += GRAPH_HEIGHT;
        }
    }

    /// The launch post's cluster details: instances in service, GPUs in use and free, and per
    /// component the cost per period and its running sum.
    fn cluster_details(&mut self) {
        self.heading("Cluster details");
        let p = self.period();
        let mut instances = Graph::new("Instances in service", "SampleCount", p);
        let count = json!({ "stat": "SampleCount", "label": "instances in service" });
        instances.rows.extend(self.row(
            Ns::Endpoints,
            Metric::CpuUtilizationNormalized,
            None,
            count,
        ));
        self.add(instances);

        let gpus_per_instance = crate::cost::instance_price(self.config)
            .ok()
            .and_then(|p| p.gpus)
            .unwrap_or(self.target.gpus);
        let in_use = |b: &Builder<'_>, component: Option<&str>| {
            b.search(
                Ns::Components,
                Metric::GpuUtilizationNormalized,
                COPY_GPU,
                component,
                "SampleCount",
                p,
            )
            .map(|s| format!("SUM({s})"))
        };
        let mut gpus = Graph::new("GPUs in use and free", "SampleCount", p);
        if let Some(used) = in_use(self, None) {
            gpus.expression("inuse", "GPUs in use", used, true);
            let hidden = json!({ "id": "instances", "stat": "SampleCount", "visible": false });
            if let Some(row) = self.row(
                Ns::Endpoints,
                Metric::CpuUtilizationNormalized,
                None,
                hidden,
            ) {
                gpus.rows.push(row);
                let free = format!("instances * {gpus_per_instance} - inuse");
                gpus.expression("free", "GPUs free", free, true);
            }
        }
        self.add(gpus);

        // Cost from the recipe: the launch post's price x GPUs-in-use arithmetic.
        let Ok(price) = crate::cost::instance_price(self.config) else {
            return;
        };
        let mut per_period = Graph::new(
            format!("Cost per {p} s by component (USD, GPUs in use x price)"),
            "SampleCount",
            p,
        );
        let mut running = Graph::new("Cost by component, running total (USD)", "SampleCount", p);
        if gpus_per_instance > 0 {
            for (i, c) in self.target.components.iter().enumerate() {
                let Some(used) = in_use(self, Some(c)) else {
                    continue;
                };
                let cost = format!(
                    "{used} * {} / {gpus_per_instance} / (3600 / {p})",
                    price.hourly_usd
                );
                per_period.expression(&format!("cost{i}"), c, cost.clone(), true);
                running.expression(&format!("cost{i}"), c, cost, false);
                running.expression(
                    &format!("total{i}"),
                    &format!("{c} total"),
                    format!("RUNNING_SUM(cost{i})"),
                    true,
                );
            }
        }
        self.add(per_period);
        self.add(running);

        // The agent's own accrued cost per component, and the instance's unused GPUs.
        let mut accrued = Graph::new("Cost accrued per component (agent, USD)", "Sum", p);
        for (i, c) in self.target.components.iter().enumerate() {
            let id = json!({ "id": format!("accrued{i}"), "label": c });
            if let Some(row) = self.row(Ns::Components, Metric::CostAccrued, Some(c), id) {
                accrued.rows.push(row);
                accrued.expression(
                    &format!("accruedtotal{i}"),
                    &format!("{c} total"),
                    format!("RUNNING_SUM(accrued{i})"),
                    true,
                );
            }
        }
        for metric in [
            Metric::UnallocatedGpuCostAccrued,
            Metric::IdleGpuCostAccrued,
        ] {
            accrued
                .rows
                .extend(self.row(Ns::Endpoints, metric, None, json!({})));
        }
        self.add(accrued);
    }

    /// The instance as a whole and per GPU.
    fn instance_and_gpus(&mut self) {
        self.heading("Instance and GPUs");
        let p = self.period();
        let mut host = Graph::new("Instance CPU, memory and disk (%)", "Average", p);
        for metric in [
            Metric::CpuUtilizationNormalized,
            Metric::MemoryUtilization,
            Metric::DiskUtilization,
        ] {
            host.rows
                .extend(self.row(Ns::Endpoints, metric, None, json!({})));
        }
        self.add(host);
        let mut gpus = Graph::new(
            "GPU utilization, memory and reservation (instance, %)",
            "Average",
            p,
        );
        for metric in [
            Metric::GpuUtilizationNormalized,
            Metric::GpuMemoryUtilizationNormalized,
            Metric::GpuReservation,
        ] {
            gpus.rows
                .extend(self.row(Ns::Endpoints, metric, None, json!({})));
        }
        self.add(gpus);
        for (metric, title) in [
            (Metric::GpuUtilization, "GPU utilization per GPU (%)"),
            (Metric::GpuMemoryUtilization, "GPU memory per GPU (%)"),
        ] {
            let mut g = Graph::new(title, "Average", p);
            if let Some(s) = self.search(Ns::Endpoints, metric, ENDPOINT_GPU, None, "Average", p) {
                g.expression(&format!("gpu{}", g.rows.len()), "", s, true);
            }
            self.add(g);
        }
        let mut unattributed = Graph::new(
            "GPU use by processes in no model copy (instance, %)",
            "Average",
            p,
        );
        for metric in [
            Metric::GpuUtilizationUnattributed,
            Metric::GpuMemoryUtilizationUnattributed,
        ] {
            unattributed
                .rows
                .extend(self.row(Ns::Endpoints, metric, None, json!({})));
        }
        self.add(unattributed);
    }

    /// GPU health per GPU (`[gpu] health`, DCGM's names): a graph per field the host publishes,
    /// each a SEARCH over the per-GPU set with the statistic that reads it right (the hottest
    /// sample, the share of time throttled, the errors of the period).
    fn gpu_health(&mut self) {
        let p = self.period();
        let fields: [(Metric, &str, &'static str); 8] = [
            (
                Metric::GpuTemperature,
                "GPU temperature (C, max)",
                "Maximum",
            ),
            (Metric::GpuPowerUsage, "GPU power draw (W)", "Average"),
            (
                Metric::GpuClockEventPowerCap,
                "Throttled by the power cap (share of time)",
                "Average",
            ),
            (
                Metric::GpuClockEventThermal,
                "Throttled by heat (share of time)",
                "Average",
            ),
            (Metric::GpuXidErrors, "XID errors", "Sum"),
            (
                Metric::GpuEccDbeVolatile,
                "ECC double-bit errors (volatile)",
                "Maximum",
            ),
            (
                Metric::GpuRemappedRowsUncorrectable,
                "Rows remapped for uncorrectable errors",
                "Maximum",
            ),
            (Metric::GpuSmActive, "SM active (ratio)", "Average"),
        ];
        let graphs: Vec<Graph> = fields
            .into_iter()
            .filter_map(|(metric, title, stat)| {
                let s = self.search(Ns::Endpoints, metric, ENDPOINT_GPU, None, stat, p)?;
                let mut g = Graph::new(title, stat, p);
                g.expression("health", "", s, true);
                Some(g)
            })
            .collect();
        if graphs.is_empty() {
            return;
        }
        self.heading("GPU health");
        for g in graphs {
            self.add(g);
        }
    }

    /// Per model copy (per component without enhanced metrics).
    fn copies(&mut self) {
        self.heading("Model copies");
        let p = self.period();
        for (i, (metric, title)) in [
            (Metric::CpuUtilizationNormalized, "CPU per copy (%)"),
            (Metric::MemoryUtilizationNormalized, "Memory per copy (%)"),
            (Metric::GpuUtilizationNormalized, "GPU per copy (%)"),
            (
                Metric::GpuMemoryUtilizationNormalized,
                "GPU memory per copy (%)",
            ),
        ]
        .into_iter()
        .enumerate()
        {
            let mut g = Graph::new(title, "Average", p);
            match self.search(Ns::Components, metric, COPY, None, "Average", p) {
                Some(s) => g.expression(&format!("copies{i}"), "", s, true),
                None => {
                    for c in &self.target.components {
                        let label = json!({ "label": c });
                        g.rows
                            .extend(self.row(Ns::Components, metric, Some(c), label));
                    }
                }
            }
            self.add(g);
        }
    }

    /// What the model servers know (`[scrape]`) and each copy's lifecycle, per component: a row
    /// per component and statistic for each metric the host publishes.
    fn model_server(&mut self) {
        let p = self.period();
        let graphs: [ServerGraph; 6] = [
            (
                "Time to first token p50 / p99 (us)",
                "p50",
                &[(Metric::Ttft, "p50"), (Metric::Ttft, "p99")],
            ),
            (
                "Inter-token latency p50 / p99 (us)",
                "p50",
                &[
                    (Metric::InterTokenLatency, "p50"),
                    (Metric::InterTokenLatency, "p99"),
                ],
            ),
            (
                "KV cache (%), queue and batch",
                "Average",
                &[
                    (Metric::KvCacheUtilization, "Average"),
                    (Metric::QueueDepth, "Average"),
                    (Metric::BatchSize, "Average"),
                ],
            ),
            (
                "Tokens per second",
                "Average",
                &[
                    (Metric::InputTokensPerSecond, "Average"),
                    (Metric::OutputTokensPerSecond, "Average"),
                ],
            ),
            (
                "Start to healthy and cold start (s, max)",
                "Maximum",
                &[
                    (Metric::ContainerStartDuration, "Maximum"),
                    (Metric::ColdStartDuration, "Maximum"),
                ],
            ),
            (
                "Restarts, OOM kills, non-zero exits",
                "Sum",
                &[
                    (Metric::ContainerRestarts, "Sum"),
                    (Metric::ContainerOomKills, "Sum"),
                    (Metric::ContainerNonZeroExits, "Sum"),
                ],
            ),
        ];
        let mut built = Vec::new();
        for (title, stat, metrics) in graphs {
            let mut g = Graph::new(title, stat, p);
            for c in &self.target.components {
                for (metric, row_stat) in metrics {
                    let label = format!("{c} {} {row_stat}", metric.name());
                    let options = json!({ "stat": row_stat, "label": label });
                    g.rows
                        .extend(self.row(Ns::Components, *metric, Some(c), options));
                }
            }
            if !g.rows.is_empty() {
                built.push(g);
            }
        }
        if built.is_empty() {
            return;
        }
        self.heading("Model servers and copy lifecycle");
        for g in built {
            self.add(g);
        }
    }

    /// The front door's invocation metrics.
    fn invocations(&mut self) {
        if !self.config.proxy.enabled {
            return;
        }
        self.heading("Invocations (front door)");
        let p = crate::pipeline::invocation_period(self.config);
        let mut counts = Graph::new("Invocations and errors", "Sum", p);
        for metric in [
            Metric::Invocations,
            Metric::Invocation4xxErrors,
            Metric::Invocation5xxErrors,
            Metric::InvocationModelErrors,
            Metric::MidStreamErrors,
        ] {
            counts
                .rows
                .extend(self.row(Ns::Invocations, metric, None, json!({})));
        }
        self.add(counts);
        let mut latency = Graph::new("Latency p50 and p99 (microseconds)", "p50", p);
        let mut first_chunk = Graph::new(
            "Streaming: first chunk latency p50 and p99 (microseconds)",
            "p50",
            p,
        );
        for (graph, metrics) in [
            (
                &mut latency,
                &[Metric::ModelLatency, Metric::OverheadLatency][..],
            ),
            (
                &mut first_chunk,
                &[
                    Metric::FirstChunkLatency,
                    Metric::FirstChunkModelLatency,
                    Metric::FirstChunkOverheadLatency,
                ][..],
            ),
        ] {
            for metric in metrics {
                for stat in ["p50", "p99"] {
                    let label = format!("{} {stat}", metric.name());
                    let options = json!({ "stat": stat, "label": label });
                    graph
                        .rows
                        .extend(self.row(Ns::Invocations, *metric, None, options));
                }
            }
        }
        self.add(latency);
        self.add(first_chunk);
        let mut per_model = Graph::new("Concurrent requests per model", "Maximum", p);
        let metric = Metric::ConcurrentRequestsPerModel;
        per_model
            .rows
            .extend(self.row(Ns::Invocations, metric, None, json!({})));
        self.add(per_model);
        let mut per_component = Graph::new("Invocations per component", "Sum", p);
        let mut model_latency = Graph::new("ModelLatency p99 per component", "p99", p);
        for c in &self.target.components {
            let row = |metric: Metric, label: String| {
                let options = json!({ "label": label });
                self.row(Ns::Invocations, metric, Some(c), options)
            };
            per_component
                .rows
                .extend(row(Metric::Invocations, c.clone()));
            per_component.rows.extend(row(
                Metric::NoCapacityInvocationFailures,
                format!("{c} no capacity"),
            ));
            model_latency
                .rows
                .extend(row(Metric::ModelLatency, c.clone()));
        }
        self.add(per_component);
        self.add(model_latency);
        let mut per_copy = Graph::new("Concurrent requests per copy", "Maximum", p);
        let metric = Metric::ConcurrentRequestsPerCopy;
        match self.search(Ns::Invocations, metric, COPY, None, "Maximum", p) {
            Some(s) => per_copy.expression("concurrency", "", s, true),
            None => {
                for c in &self.target.components {
                    let label = json!({ "label": c });
                    per_copy
                        .rows
                        .extend(self.row(Ns::Invocations, metric, Some(c), label));
                }
            }
        }
        self.add(per_copy);
    }

    fn finish(self) -> Value {
        json!({
            "start": "-PT3H",
            "periodOverride": "inherit",
            "widgets": self.widgets,
        })
    }
}

/// The widget list of a body, one line each (for the README and `--list`).
pub fn describe(body: &Value) -> String {
    let mut out = String::new();
    for w in body["widgets"].as_array().into_iter().flatten() {
        let p = &w["properties"];
        match w["type"].as_str() {
            Some("text") => {
                let _ = writeln!(out, "{}", p["markdown"].as_str().unwrap_or_default());
            }
            _ => {
                let rows = p["metrics"].as_array().map_or(0, Vec::len);
                let _ = writeln!(
                    out,
                    "- {} ({} rows, {} per {} s)",
                    p["title"].as_str().unwrap_or_default(),
                    rows,
                    p["stat"].as_str().unwrap_or_default(),
                    p["period"]
                );
            }
        }
    }
    out
}

/// The `dashboard` subcommand's arguments.
#[derive(Clone, Debug)]
pub struct Args {
    /// Components to chart; empty: those discovery finds now.
    pub components: Vec<String>,
    /// GPUs per instance; None: what NVML shows now.
    pub gpus: Option<u32>,
    /// Save as this dashboard with PutDashboard.
    pub put: Option<String>,
    /// Print the widget list instead of the body.
    pub list: bool,
}

/// The `dashboard` subcommand: the body on stdout, or saved; failure (1) says why on stderr.
#[allow(
    clippy::print_stderr,
    reason = "a one-shot command for a person; no logger is set up"
)]
pub fn run(config: &Config, runtime: &tokio::runtime::Runtime, args: &Args) -> ExitCode {
    match runtime.block_on(make_and_put(config, args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

#[allow(
    clippy::print_stderr,
    reason = "PutDashboard's validation messages and the outcome, for the person who asked"
)]
async fn make_and_put(config: &Config, args: &Args) -> anyhow::Result<()> {
    let sdk = crate::sinks::cloudwatch::load_sdk_config().await?;
    let region = sdk.region().map(|r| r.to_string()).unwrap_or_default();
    // What the agent's own sources find now, for what the arguments leave open.
    let found = if args.components.is_empty() || args.gpus.is_none() {
        crate::sources::snapshot(config).await
    } else {
        crate::sources::Snapshot::default()
    };
    let components = if args.components.is_empty() {
        let found: BTreeSet<String> = found
            .inventory
            .containers
            .values()
            .map(|c| c.component.to_string())
            .collect();
        found.into_iter().collect()
    } else {
        args.components.clone()
    };
    let target = Target {
        gpus: args.gpus.unwrap_or(found.devices.len() as u32),
        components,
        region,
    };
    let body = body(config, &target)?;
    let text = serde_json::to_string_pretty(&body)?;
    let Some(name) = &args.put else {
        let out = if args.list {
            describe(&body)
        } else {
            text + "\n"
        };
        std::io::Write::write_all(&mut std::io::stdout().lock(), out.as_bytes())?;
        return Ok(());
    };
    let client = aws_sdk_cloudwatch::Client::new(&sdk);
    let answer = client
        .put_dashboard()
        .dashboard_name(name)
        .dashboard_body(text)
        .send()
        .await
        .map_err(|e| {
            anyhow::anyhow!(
                "PutDashboard {name}: {}",
                aws_sdk_cloudwatch::error::DisplayErrorContext(e)
            )
        })?;
    for m in answer.dashboard_validation_messages() {
        eprintln!(
            "PutDashboard: {}: {}",
            m.data_path().unwrap_or("(body)"),
            m.message().unwrap_or_default()
        );
    }
    eprintln!(
        "saved dashboard {name} in {}: {} widgets for {} components",
        target.region,
        body["widgets"].as_array().map_or(0, Vec::len),
        target.components.len()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn config(extra: &str) -> Config {
        Config::parse(
            &format!("[endpoint]\nname = \"ep\"\ninstance_id = \"i-1\"\n{extra}"),
            Path::new("t.toml"),
        )
        .unwrap()
    }

    fn target(gpus: u32, components: &[&str]) -> Target {
        Target {
            gpus,
            components: components.iter().map(|c| c.to_string()).collect(),
            region: "us-east-1".into(),
        }
    }

    fn text(body: &Value) -> String {
        body.to_string()
    }

    #[test]
    fn without_enhanced_metrics_there_is_no_per_gpu_recipe() {
        let body = body(&config(""), &target(4, &["ic-a"])).unwrap();
        let t = text(&body);
        assert!(t.contains("Instances in service"), "{t}");
        assert!(
            !t.contains("ContainerId,InferenceComponentName,GpuId"),
            "no six-key series to search: {t}"
        );
        assert!(
            t.contains("## GPU health"),
            "health is per GPU either way: {t}"
        );
        assert!(!t.contains("Invocations"), "front door off: {t}");
    }

    #[test]
    fn enhanced_and_priced_gives_the_launch_posts_recipes() {
        let c = config(
            "instance_type = \"ml.g6.12xlarge\"\n[metrics]\nenhanced = true\npublish_frequency_seconds = 10\n",
        );
        let body = body(&c, &target(4, &["ic-a", "ic-b"])).unwrap();
        let t = text(&body);
        assert!(
            t.contains("SUM(SEARCH('{/aws/sagemaker/InferenceComponents,EndpointName,VariantName,InstanceId,ContainerId,InferenceComponentName,GpuId} MetricName=\\\"GPUUtilizationNormalized\\\" EndpointName=\\\"ep\\\" InferenceComponentName=\\\"ic-b\\\"', 'SampleCount', 10)) * 5.752 / 4 / (3600 / 10)"),
            "{t}"
        );
        assert!(t.contains("RUNNING_SUM(cost1)"), "{t}");
        assert!(t.contains("instances * 4 - inuse"), "{t}");
        assert!(describe(&body).contains("- GPUs in use and free (3 rows"));
    }

    #[test]
    fn gpu_health_widgets_follow_the_health_groups_on() {
        let on = body(&config("[metrics]\nenhanced = true\n"), &target(2, &[])).unwrap();
        let t = text(&on);
        assert!(t.contains("## GPU health"), "{t}");
        assert!(t.contains("DCGM_FI_DEV_GPU_TEMP"), "{t}");
        assert!(t.contains("DCGM_EXP_XID_ERRORS_COUNT"), "{t}");
        // Clocks and memory are off by default: no widget names them.
        assert!(!t.contains("DCGM_FI_DEV_SM_CLOCK"), "{t}");
        let off = body(
            &config("[metrics]\nenhanced = true\n[gpu]\nhealth = []\n"),
            &target(2, &[]),
        )
        .unwrap();
        assert!(!text(&off).contains("GPU health"));
    }

    #[test]
    fn model_server_widgets_follow_the_scrape_setting() {
        let off = body(
            &config("[metrics]\nenhanced = true\n"),
            &target(0, &["ic-a"]),
        )
        .unwrap();
        assert!(!text(&off).contains("Model servers"), "{}", text(&off));
        let on = body(
            &config("[metrics]\nenhanced = true\n[scrape]\nenabled = true\n"),
            &target(0, &["ic-a"]),
        )
        .unwrap();
        let t = text(&on);
        assert!(t.contains("## Model servers and copy lifecycle"), "{t}");
        assert!(t.contains("\"TTFT\"") && t.contains("\"p99\""), "{t}");
        assert!(t.contains("KVCacheUtilization"), "{t}");
    }

    #[test]
    fn quotes_in_names_are_refused() {
        let e = body(&config(""), &target(0, &["a'b"])).unwrap_err();
        assert!(matches!(e, DashboardError::Quote { .. }), "{e}");
        let many: Vec<String> = (0..=MAX_COMPONENTS).map(|i| format!("c{i}")).collect();
        let t = Target {
            components: many,
            ..target(0, &[])
        };
        assert_eq!(
            body(&config(""), &t).unwrap_err(),
            DashboardError::TooManyComponents(MAX_COMPONENTS + 1)
        );
    }
}
