//! `top`: a live view of the running agent in the terminal, read from its admin endpoint's
//! `GET /snapshot` (see `live`) once a sample.
//!
//! Built on ratatui over crossterm (plain ANSI on the terminal the process has, so it works over
//! SSH). Keys: `s` sorts by the next column, `r` reverses, `q`, Esc or Ctrl-C quits. Without a
//! terminal (stdout piped) it prints one snapshot as a table and exits.

use std::io::{IsTerminal as _, Write as _};
use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use ratatui::crossterm::event::{self, Event, KeyCode, KeyEventKind, KeyModifiers};
use ratatui::layout::{Constraint, Layout};
use ratatui::style::{Modifier, Style};
use ratatui::text::Line;
use ratatui::widgets::{Block, Paragraph, Row, Table};
use ratatui::{DefaultTerminal, Frame};

use crate::config::Config;
use crate::live::{CopyRow, LiveView, SNAPSHOT_VERSION};

/// The screen is redrawn at most this often, however short the sampling interval (a 100 ms
/// sample is faster than anyone reads, and each redraw is a request to the agent).
pub const MIN_REFRESH: Duration = Duration::from_millis(500);

/// The component column is at most this wide on screen (longer names are cut there).
const MAX_COMPONENT_COLUMN: usize = 40;

/// The copies table's columns, in the order `s` cycles through them.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum SortBy {
    Component,
    Cpu,
    Memory,
    Gpu,
    GpuMemory,
    Requests,
    P99,
    Cost,
}

impl SortBy {
    const ALL: [SortBy; 8] = [
        SortBy::Component,
        SortBy::Cpu,
        SortBy::Memory,
        SortBy::Gpu,
        SortBy::GpuMemory,
        SortBy::Requests,
        SortBy::P99,
        SortBy::Cost,
    ];

    pub fn next(self) -> SortBy {
        let i = SortBy::ALL.iter().position(|s| *s == self).unwrap_or(0);
        SortBy::ALL[(i + 1) % SortBy::ALL.len()]
    }

    /// The column header it sorts.
    pub fn header(self) -> &'static str {
        COPY_HEADERS[match self {
            SortBy::Component => 0,
            SortBy::Cpu => 3,
            SortBy::Memory => 4,
            SortBy::Gpu => 5,
            SortBy::GpuMemory => 6,
            SortBy::Requests => 7,
            SortBy::P99 => 9,
            SortBy::Cost => 10,
        }]
    }

    fn key(self, c: &CopyRow) -> Option<f64> {
        match self {
            SortBy::Component => None,
            SortBy::Cpu => c.cpu_percent,
            SortBy::Memory => c.memory_percent,
            SortBy::Gpu => c.gpu_percent,
            SortBy::GpuMemory => c.gpu_memory_percent,
            SortBy::Requests => c.requests_per_second,
            SortBy::P99 => c.latency_p99_us,
            SortBy::Cost => c.cost_per_hour,
        }
    }
}

/// How the copies are ordered: by name ascending, by a figure descending (the busiest first);
/// `reversed` turns either around.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct Order {
    pub by: SortBy,
    pub reversed: bool,
}

impl Default for Order {
    fn default() -> Self {
        Order {
            by: SortBy::Component,
            reversed: false,
        }
    }
}

/// The copies in `order`; rows without the figure go last.
pub fn sorted(view: &LiveView, order: Order) -> Vec<&CopyRow> {
    let mut rows: Vec<&CopyRow> = view.copies.iter().collect();
    let by_name = |a: &&CopyRow, b: &&CopyRow| {
        (&a.component, &a.container_id).cmp(&(&b.component, &b.container_id))
    };
    match order.by {
        SortBy::Component => rows.sort_by(by_name),
        by => rows.sort_by(|a, b| {
            let (x, y) = (by.key(a), by.key(b));
            match (x, y) {
                (Some(x), Some(y)) => y.total_cmp(&x).then_with(|| by_name(a, b)),
                (Some(_), None) => std::cmp::Ordering::Less,
                (None, Some(_)) => std::cmp::Ordering::Greater,
                (None, None) => by_name(a, b),
            }
        }),
    }
    if order.reversed {
        rows.reverse();
    }
    rows
}

pub const GPU_HEADERS: [&str; 6] = ["GPU", "UTIL%", "MEM%", "MEM USED", "TEMP C", "POWER W"];
pub const COPY_HEADERS: [&str; 11] = [
    "COMPONENT",
    "CONTAINER",
    "GPUS",
    "CPU%",
    "MEM%",
    "GPU%",
    "GPUMEM%",
    "REQ/S",
    "P50 MS",
    "P99 MS",
    "$/HOUR",
];

fn figure(v: Option<f64>, decimals: usize) -> String {
    v.map_or_else(|| "-".to_string(), |v| format!("{v:.decimals$}"))
}

fn gib(bytes: u64) -> String {
    format!("{:.1} GiB", bytes as f64 / (1u64 << 30) as f64)
}

/// The GPU table's rows, as text.
pub fn gpu_rows(view: &LiveView) -> Vec<[String; 6]> {
    view.gpus
        .iter()
        .map(|g| {
            let memory_percent = (g.memory_total_bytes > 0)
                .then(|| g.memory_used_bytes as f64 * 100.0 / g.memory_total_bytes as f64);
            [
                format!("gpu_{}", g.index),
                figure(g.utilization_percent, 1),
                figure(memory_percent, 1),
                format!(
                    "{} / {}",
                    gib(g.memory_used_bytes),
                    gib(g.memory_total_bytes)
                ),
                figure(g.temperature_c, 0),
                figure(g.power_w, 0),
            ]
        })
        .collect()
}

/// The copies table's rows, as text, in `order`.
pub fn copy_rows(view: &LiveView, order: Order) -> Vec<[String; 11]> {
    sorted(view, order)
        .into_iter()
        .map(|c| {
            let gpus = if c.gpus.is_empty() {
                "-".to_string()
            } else {
                c.gpus
                    .iter()
                    .map(u32::to_string)
                    .collect::<Vec<_>>()
                    .join(",")
            };
            [
                c.component.clone(),
                c.container_id.clone(),
                gpus,
                figure(c.cpu_percent, 1),
                figure(c.memory_percent, 1),
                figure(c.gpu_percent, 1),
                figure(c.gpu_memory_percent, 1),
                figure(c.requests_per_second, 1),
                figure(c.latency_p50_us.map(|us| us / 1000.0), 1),
                figure(c.latency_p99_us.map(|us| us / 1000.0), 1),
                figure(c.cost_per_hour, 3),
            ]
        })
        .collect()
}

/// The tick's time of day, UTC.
fn clock(ms: u64) -> String {
    let s = ms / 1000 % 86_400;
    format!("{:02}:{:02}:{:02} UTC", s / 3600, s / 60 % 60, s % 60)
}

fn title(view: &LiveView) -> String {
    format!(
        "endpoint {}  instance {}  tick {}",
        view.endpoint_name,
        view.instance_id,
        clock(view.tick_ms)
    )
}

fn costs(view: &LiveView) -> String {
    let usd = |v: Option<f64>| v.map_or_else(|| "-".to_string(), |v| format!("${v:.3}"));
    let mut line = format!(
        "GPU cost per hour: unallocated {}  idle {}",
        usd(view.unallocated_gpu_cost_per_hour),
        usd(view.idle_gpu_cost_per_hour)
    );
    if view.gpus_left_out + view.copies_left_out > 0 {
        line.push_str(&format!(
            "  ({} GPUs and {} copies not shown)",
            view.gpus_left_out, view.copies_left_out
        ));
    }
    line
}

/// Fixed-width text columns, two spaces apart.
fn text_table<const N: usize>(headers: [&str; N], rows: &[[String; N]], out: &mut String) {
    let mut widths = headers.map(str::len);
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut line = |cells: Vec<&str>| {
        let text: Vec<String> = cells
            .iter()
            .zip(widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        out.push_str(text.join("  ").trim_end());
        out.push('\n');
    };
    line(headers.to_vec());
    for row in rows {
        line(row.iter().map(String::as_str).collect());
    }
}

/// One snapshot as plain text: what `top` prints when stdout is not a terminal.
pub fn render_text(view: &LiveView, order: Order) -> String {
    let mut out = format!("{}\n\n", title(view));
    text_table(GPU_HEADERS, &gpu_rows(view), &mut out);
    out.push('\n');
    text_table(COPY_HEADERS, &copy_rows(view, order), &mut out);
    out.push('\n');
    out.push_str(&costs(view));
    out.push('\n');
    out
}

/// Reads `/snapshot` from the agent whose admin endpoint is `listen`.
pub fn fetch(listen: SocketAddr) -> Result<LiveView, String> {
    let (status, body) =
        crate::admin::get(listen, "/snapshot").map_err(|e| format!("{listen}: {e}"))?;
    if status != 200 {
        return Err(format!(
            "{listen}/snapshot answered {status}: {}",
            body.trim()
        ));
    }
    let view: LiveView = serde_json::from_str(&body)
        .map_err(|e| format!("{listen}/snapshot is not a snapshot: {e}"))?;
    if view.version != SNAPSHOT_VERSION {
        return Err(format!(
            "{listen}/snapshot is version {}, this top reads version {SNAPSHOT_VERSION}",
            view.version
        ));
    }
    Ok(view)
}

/// The `top` subcommand: 0 when it quit or printed, 1 when the agent could not be read.
#[allow(
    clippy::print_stderr,
    reason = "a command for a person; what went wrong goes to stderr once the screen is restored"
)]
pub fn run(path: &std::path::Path, config: &Config) -> ExitCode {
    if !config.admin.enabled {
        eprintln!(
            "error: [admin] enabled = false in {}: top reads the admin endpoint",
            path.display()
        );
        return ExitCode::FAILURE;
    }
    let listen = config.admin.listen;
    if !std::io::stdout().is_terminal() {
        return match fetch(listen) {
            Ok(view) => {
                let text = render_text(&view, Order::default());
                match std::io::stdout().lock().write_all(text.as_bytes()) {
                    Ok(()) => ExitCode::SUCCESS,
                    Err(e) => {
                        eprintln!("error: writing the snapshot: {e}");
                        ExitCode::FAILURE
                    }
                }
            }
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::FAILURE
            }
        };
    }
    let refresh = Duration::from_millis(config.metrics.sample_interval_ms).max(MIN_REFRESH);
    let mut terminal = match ratatui::try_init() {
        Ok(t) => t,
        Err(e) => {
            ratatui::restore();
            eprintln!("error: cannot set up the terminal: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = interactive(&mut terminal, listen, refresh);
    ratatui::restore();
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// What the screen shows between two reads.
struct Screen {
    view: Option<LiveView>,
    /// The last read's error, shown until a read succeeds.
    error: Option<String>,
    order: Order,
}

fn interactive(
    terminal: &mut DefaultTerminal,
    listen: SocketAddr,
    refresh: Duration,
) -> std::io::Result<()> {
    let mut screen = Screen {
        view: None,
        error: None,
        order: Order::default(),
    };
    let mut next_read = Instant::now();
    loop {
        if Instant::now() >= next_read {
            match fetch(listen) {
                Ok(view) => {
                    screen.view = Some(view);
                    screen.error = None;
                }
                Err(e) => screen.error = Some(e),
            }
            next_read = Instant::now() + refresh;
        }
        terminal.draw(|frame| draw(frame, &screen))?;
        let wait = next_read.saturating_duration_since(Instant::now());
        if !event::poll(wait)? {
            continue;
        }
        let Event::Key(key) = event::read()? else {
            continue;
        };
        if key.kind != KeyEventKind::Press {
            continue;
        }
        match key.code {
            KeyCode::Char('q') | KeyCode::Esc => return Ok(()),
            KeyCode::Char('c') if key.modifiers.contains(KeyModifiers::CONTROL) => return Ok(()),
            KeyCode::Char('s') => {
                screen.order = Order {
                    by: screen.order.by.next(),
                    reversed: false,
                }
            }
            KeyCode::Char('r') => screen.order.reversed = !screen.order.reversed,
            _ => {}
        }
    }
}

fn draw(frame: &mut Frame<'_>, screen: &Screen) {
    let empty = LiveView::default();
    let view = screen.view.as_ref().unwrap_or(&empty);
    let gpu_height = view.gpus.len().min(16) as u16 + 3;
    let [top, gpus, copies, bottom] = Layout::vertical([
        Constraint::Length(2),
        Constraint::Length(gpu_height),
        Constraint::Min(4),
        Constraint::Length(2),
    ])
    .areas(frame.area());
    let status = match (&screen.error, &screen.view) {
        (Some(e), _) => format!("cannot read the agent: {e}"),
        (None, None) => "waiting for the agent's first tick".to_string(),
        (None, Some(v)) => title(v),
    };
    let sort = format!(
        "sort: {}{}   keys: s sort  r reverse  q quit",
        screen.order.by.header(),
        if screen.order.reversed {
            " (reversed)"
        } else {
            ""
        }
    );
    frame.render_widget(
        Paragraph::new(vec![Line::from(status), Line::from(sort)]),
        top,
    );
    let bold = Style::default().add_modifier(Modifier::BOLD);
    let gpu_table = Table::new(
        gpu_rows(view).into_iter().map(Row::new),
        [
            Constraint::Length(6),
            Constraint::Length(6),
            Constraint::Length(6),
            Constraint::Length(22),
            Constraint::Length(7),
            Constraint::Length(8),
        ],
    )
    .header(Row::new(GPU_HEADERS).style(bold))
    .block(Block::bordered().title("GPUs"));
    frame.render_widget(gpu_table, gpus);
    // The component column as wide as its longest name, within reason; the figures after it.
    let component_width = view
        .copies
        .iter()
        .map(|c| c.component.chars().count())
        .max()
        .unwrap_or(0)
        .clamp(COPY_HEADERS[0].len(), MAX_COMPONENT_COLUMN) as u16;
    let copy_table = Table::new(
        copy_rows(view, screen.order).into_iter().map(Row::new),
        [
            Constraint::Length(component_width),
            Constraint::Length(12),
            Constraint::Length(8),
            Constraint::Length(6),
            Constraint::Length(6),
            Constraint::Length(6),
            Constraint::Length(8),
            Constraint::Length(7),
            Constraint::Length(7),
            Constraint::Length(7),
            Constraint::Length(8),
        ],
    )
    .header(Row::new(COPY_HEADERS).style(bold))
    .block(Block::bordered().title("Model copies"));
    frame.render_widget(copy_table, copies);
    frame.render_widget(Paragraph::new(costs(view)), bottom);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::live::GpuRow;

    fn view() -> LiveView {
        let copy = |component: &str, id: &str, cpu: Option<f64>| CopyRow {
            component: component.into(),
            container_id: id.into(),
            gpus: vec![0],
            cpu_percent: cpu,
            ..CopyRow::default()
        };
        LiveView {
            version: SNAPSHOT_VERSION,
            tick_ms: 1_700_000_005_000,
            endpoint_name: "ep".into(),
            instance_id: "i-1".into(),
            gpus: vec![GpuRow {
                index: 0,
                utilization_percent: Some(60.0),
                memory_used_bytes: 20 << 30,
                memory_total_bytes: 80 << 30,
                ..GpuRow::default()
            }],
            copies: vec![
                copy("b", "bbbbbbbbbbbb", Some(5.0)),
                copy("a", "aaaaaaaaaaaa", Some(1.0)),
                copy("c", "cccccccccccc", None),
            ],
            unallocated_gpu_cost_per_hour: Some(1.5),
            ..LiveView::default()
        }
    }

    #[test]
    fn copies_sort_by_name_or_busiest_first_and_reverse() {
        let v = view();
        let names = |order| -> Vec<String> {
            sorted(&v, order)
                .iter()
                .map(|c| c.component.clone())
                .collect()
        };
        assert_eq!(names(Order::default()), ["a", "b", "c"]);
        let cpu = Order {
            by: SortBy::Cpu,
            reversed: false,
        };
        assert_eq!(names(cpu), ["b", "a", "c"], "no figure goes last");
        assert_eq!(
            names(Order {
                reversed: true,
                ..cpu
            }),
            ["c", "a", "b"]
        );
        assert_eq!(SortBy::Cost.next(), SortBy::Component);
        assert_eq!(SortBy::Cpu.header(), "CPU%");
        assert_eq!(SortBy::P99.header(), "P99 MS");
    }

    #[test]
    fn the_piped_table_has_a_row_per_gpu_and_copy() {
        let text = render_text(&view(), Order::default());
        assert!(
            text.starts_with("endpoint ep  instance i-1  tick 22:13:25 UTC\n"),
            "{text}"
        );
        assert!(
            text.contains("gpu_0  60.0   25.0  20.0 GiB / 80.0 GiB  -       -"),
            "{text}"
        );
        let a = text.lines().position(|l| l.starts_with("a ")).unwrap();
        let b = text.lines().position(|l| l.starts_with("b ")).unwrap();
        assert!(a < b, "{text}");
        assert!(text.contains("unallocated $1.500  idle -"), "{text}");
    }
}
