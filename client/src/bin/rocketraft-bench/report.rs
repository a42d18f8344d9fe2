//! Turns the JSON lines of a run into the Markdown for `docs/benchmarks.md`: the
//! calibration of this run, each system's medians over the rounds, and the ratio tables
//! (rocketraft / peer, per round, then the median and min-max of those ratios, so machine
//! noise that hits one round hits both sides of its ratio).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write;
use std::path::Path;

use anyhow::Context;
use serde::{Deserialize, Serialize};

use crate::run::{Durability, Record};
use crate::systems::SystemKind;

/// A ceiling measured by the script before the cells (fio, sockperf, iperf3).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Calibration {
    pub probe: String,
    pub value: f64,
    pub unit: String,
}

/// Everything read from the JSON lines.
#[derive(Default)]
pub struct Results {
    pub cells: Vec<Record>,
    pub calibration: Vec<Calibration>,
}

pub fn load(paths: &[impl AsRef<Path>]) -> anyhow::Result<Results> {
    let mut r = Results::default();
    for path in paths {
        let path = path.as_ref();
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        for (i, line) in text.lines().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            let v: serde_json::Value = serde_json::from_str(line)
                .with_context(|| format!("{}:{}: not JSON", path.display(), i + 1))?;
            match v.get("kind").and_then(|k| k.as_str()) {
                Some("cell") => {
                    r.cells.push(serde_json::from_value(v).with_context(|| {
                        format!("{}:{}: not a cell record", path.display(), i + 1)
                    })?)
                }
                Some("calibration") => {
                    r.calibration
                        .push(serde_json::from_value(v).with_context(|| {
                            format!("{}:{}: not a calibration record", path.display(), i + 1)
                        })?)
                }
                _ => anyhow::bail!(
                    "{}:{}: no known \"kind\" (cell or calibration)",
                    path.display(),
                    i + 1
                ),
            }
        }
    }
    Ok(r)
}

/// A system as configured: rocketraft/fsync, nats/nofsync, ...
pub type Series = (SystemKind, Durability);

pub fn series_name(s: Series) -> String {
    match s {
        (SystemKind::Nats, Durability::Fsync) => "NATS (sync always)".into(),
        (SystemKind::Nats, Durability::Nofsync) => "NATS (default, no fsync)".into(),
        (SystemKind::Rabbitmq, _) => "RabbitMQ quorum queue".into(),
        (SystemKind::Rocketraft, Durability::Fsync) => "rocketraft".into(),
        (SystemKind::Rocketraft, Durability::Nofsync) => "rocketraft (no fsync)".into(),
    }
}

/// Median, min and max.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Spread {
    pub median: f64,
    pub min: f64,
    pub max: f64,
    pub n: usize,
}

pub fn spread(values: &[f64]) -> Option<Spread> {
    let mut v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return None;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    let median = if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    };
    Some(Spread {
        median,
        min: v[0],
        max: v[n - 1],
        n,
    })
}

/// Cells by key, then series, then round. Keys keep the plan's order of first appearance.
pub struct Grouped<'a> {
    pub keys: Vec<String>,
    pub by: BTreeMap<String, BTreeMap<Series, BTreeMap<u32, &'a Record>>>,
}

pub fn group(cells: &[Record]) -> Grouped<'_> {
    let mut keys = Vec::new();
    let mut by: BTreeMap<String, BTreeMap<Series, BTreeMap<u32, &Record>>> = BTreeMap::new();
    for r in cells {
        let k = r.cell.key();
        if !by.contains_key(&k) {
            keys.push(k.clone());
        }
        by.entry(k)
            .or_default()
            .entry((r.system, r.durability))
            .or_default()
            .insert(r.round, r);
    }
    Grouped { keys, by }
}

fn fmt_rate(x: f64) -> String {
    if x >= 100.0 {
        let s = format!("{:.0}", x);
        // Thousands separators make 5- and 6-digit rates readable.
        let mut out = String::new();
        for (i, c) in s.chars().enumerate() {
            if i > 0 && (s.len() - i) % 3 == 0 {
                out.push(',');
            }
            out.push(c);
        }
        out
    } else {
        format!("{x:.1}")
    }
}

fn fmt_ms(us: f64) -> String {
    let ms = us / 1000.0;
    if ms >= 100.0 {
        format!("{ms:.0}")
    } else if ms >= 10.0 {
        format!("{ms:.1}")
    } else {
        format!("{ms:.2}")
    }
}

fn fmt_spread(s: Option<Spread>, f: fn(f64) -> String) -> String {
    match s {
        None => "—".into(),
        Some(s) if s.n == 1 || s.min == s.max => f(s.median),
        Some(s) => format!("{} ({}–{})", f(s.median), f(s.min), f(s.max)),
    }
}

fn ratio(x: f64) -> String {
    format!("{x:.2}x")
}

/// The Markdown section. `command` is how the run was made (shown verbatim).
pub fn markdown(results: &Results, title: &str, command: &str, charts: &[String]) -> String {
    let mut md = String::new();
    let _ = writeln!(md, "### {title}\n");
    if !command.is_empty() {
        let _ = writeln!(md, "```sh\n{command}\n```\n");
    }
    let rounds: BTreeSet<u32> = results.cells.iter().map(|r| r.round).collect();
    let interfered = results.cells.iter().filter(|r| r.interfered).count();
    let _ = writeln!(
        md,
        "{} cells, {} round(s); {} cell(s) flagged as disturbed (machine busier than the benchmark's own processes by > 0.2 cores).\n",
        results.cells.len(),
        rounds.len(),
        interfered
    );
    if !results.calibration.is_empty() {
        let _ = writeln!(md, "Calibration, measured at the start of the run:\n");
        let _ = writeln!(md, "| probe | value |\n| --- | --- |");
        for c in &results.calibration {
            let _ = writeln!(md, "| {} | {} {} |", c.probe, fmt_rate(c.value), c.unit);
        }
        md.push('\n');
    }
    let g = group(&results.cells);
    ratio_tables(&mut md, &g);
    absolute_table(&mut md, &g);
    for c in charts {
        let _ = writeln!(md, "![{c}](bench/{c})\n");
    }
    md
}

fn ratio_tables(md: &mut String, g: &Grouped) {
    let ours_fsync = (SystemKind::Rocketraft, Durability::Fsync);
    let ours_nofsync = (SystemKind::Rocketraft, Durability::Nofsync);
    let pairs = [
        (ours_fsync, (SystemKind::Nats, Durability::Fsync)),
        (ours_fsync, (SystemKind::Rabbitmq, Durability::Fsync)),
        (ours_nofsync, (SystemKind::Nats, Durability::Nofsync)),
    ];
    for (ours, peer) in pairs {
        let rows: Vec<String> = g
            .keys
            .iter()
            .filter_map(|k| ratio_row(k, g.by.get(k)?, ours, peer))
            .collect();
        let _ = writeln!(
            md,
            "**{} / {}** (per round, then median and min–max over rounds; throughput: higher is better for rocketraft; latency and CPU: lower is better):\n",
            series_name(ours),
            series_name(peer)
        );
        if rows.is_empty() {
            let have_peer = g.by.values().any(|s| s.contains_key(&peer));
            let _ = writeln!(
                md,
                "{}\n",
                if !have_peer {
                    format!("No {} cells in this run.", series_name(peer))
                } else {
                    format!(
                        "No {} cells in this run (rocketraft has no no-fsync mode yet); the peer's numbers are in the table of medians below.",
                        series_name(ours)
                    )
                }
            );
            continue;
        }
        let _ = writeln!(
            md,
            "| cell | msgs/s | p50 | p99 | server CPU/msg |\n| --- | --- | --- | --- | --- |"
        );
        for r in rows {
            let _ = writeln!(md, "{r}");
        }
        md.push('\n');
    }
}

fn ratio_row(
    key: &str,
    series: &BTreeMap<Series, BTreeMap<u32, &Record>>,
    ours: Series,
    peer: Series,
) -> Option<String> {
    let (a, b) = (series.get(&ours)?, series.get(&peer)?);
    let per_round = |f: fn(&Record) -> f64| -> Option<Spread> {
        let v: Vec<f64> = a
            .iter()
            .filter_map(|(round, x)| {
                let y = b.get(round)?;
                let (fx, fy) = (f(x), f(y));
                (fy > 0.0 && fx > 0.0).then(|| fx / fy)
            })
            .collect();
        spread(&v)
    };
    let tput = per_round(|r| r.msgs_per_s)?;
    let latency = a.values().next().map(|r| r.latency.as_str()) != Some("none");
    let p50 = if latency {
        per_round(|r| r.p50_us as f64)
    } else {
        None
    };
    let p99 = if latency {
        per_round(|r| r.p99_us as f64)
    } else {
        None
    };
    let cpu = per_round(|r| r.server_cpu_us_per_msg);
    Some(format!(
        "| {key} | {} | {} | {} | {} |",
        fmt_spread(Some(tput), ratio),
        fmt_spread(p50, ratio),
        fmt_spread(p99, ratio),
        fmt_spread(cpu, ratio)
    ))
}

fn absolute_table(md: &mut String, g: &Grouped) {
    let _ = writeln!(
        md,
        "Medians over rounds (min–max where rounds differ). Latency: open-loop cells from the intended send time, e2e from intended send to delivery, drain none; CPU is utime+stime per message, servers summed over the 3 nodes (rocketraft's nameserver apart, in the aux column); RSS is the largest node's peak during the cell; flushes are the disk's, per message sent:\n"
    );
    let _ = writeln!(
        md,
        "| cell | system | msgs/s | MB/s | p50 ms | p99 ms | p999 ms | max ms | server CPU us/msg | aux CPU us/msg | client CPU us/msg | peak RSS MiB | msgs/flush | server write B/msg | busy cores | errors |"
    );
    let _ = writeln!(md, "|{}", " --- |".repeat(16));
    for k in &g.keys {
        let Some(series) = g.by.get(k) else { continue };
        for (s, rounds) in series {
            let rs: Vec<&Record> = rounds.values().copied().collect();
            let f =
                |get: fn(&Record) -> f64| spread(&rs.iter().map(|r| get(r)).collect::<Vec<_>>());
            let none = rs.first().is_some_and(|r| r.latency == "none");
            let lat = |get: fn(&Record) -> f64| {
                if none {
                    "—".to_string()
                } else {
                    fmt_spread(f(get), fmt_ms)
                }
            };
            let errors: u64 = rs.iter().map(|r| r.errors + r.unsent).sum();
            let mut name = series_name(*s);
            if let Some(fill) = spread(
                &rs.iter()
                    .filter_map(|r| r.fill_msgs_per_s)
                    .collect::<Vec<_>>(),
            ) {
                name.push_str(&format!(" (filled at {}/s)", fmt_rate(fill.median)));
            }
            let _ = writeln!(
                md,
                "| {k} | {name} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {errors} |",
                fmt_spread(f(|r| r.msgs_per_s), fmt_rate),
                fmt_spread(f(|r| r.mb_per_s), |x| format!("{x:.1}")),
                lat(|r| r.p50_us as f64),
                lat(|r| r.p99_us as f64),
                lat(|r| r.p999_us as f64),
                lat(|r| r.max_us as f64),
                fmt_spread(f(|r| r.server_cpu_us_per_msg), |x| format!("{x:.1}")),
                fmt_spread(f(|r| r.aux_cpu_us_per_msg), |x| format!("{x:.1}")),
                fmt_spread(f(|r| r.client_cpu_us_per_msg), |x| format!("{x:.1}")),
                fmt_spread(
                    f(|r| r.server_rss_peak_mib.iter().copied().fold(0.0, f64::max)),
                    |x| format!("{x:.0}")
                ),
                fmt_spread(
                    spread(
                        &rs.iter()
                            .filter_map(|r| r.msgs_per_flush)
                            .collect::<Vec<_>>()
                    ),
                    |x| format!("{x:.1}")
                ),
                fmt_spread(f(|r| r.server_write_bytes_per_msg), |x| format!("{x:.0}")),
                fmt_spread(f(|r| r.busy_cores), |x| format!("{x:.2}")),
            );
        }
    }
    md.push('\n');
}

/// The CI variant's short form: one line per system and the ratios of the base cell.
pub fn ci_summary(results: &Results) -> String {
    let g = group(&results.cells);
    let mut out = String::new();
    let ours = (SystemKind::Rocketraft, Durability::Fsync);
    for k in &g.keys {
        let Some(series) = g.by.get(k) else { continue };
        let _ = writeln!(out, "cell {k}:");
        for (s, rounds) in series {
            let v: Vec<f64> = rounds.values().map(|r| r.msgs_per_s).collect();
            let p99: Vec<f64> = rounds.values().map(|r| r.p99_us as f64).collect();
            let cpu: Vec<f64> = rounds.values().map(|r| r.server_cpu_us_per_msg).collect();
            let disturbed = rounds.values().any(|r| r.interfered);
            let _ = writeln!(
                out,
                "  {:<28} {:>10} msgs/s  p99 {:>8} ms  server CPU {:>6.1} us/msg{}",
                series_name(*s),
                fmt_rate(spread(&v).map_or(0.0, |s| s.median)),
                fmt_ms(spread(&p99).map_or(0.0, |s| s.median)),
                spread(&cpu).map_or(0.0, |s| s.median),
                if disturbed {
                    "  (machine busier than the benchmark: disturbed)"
                } else {
                    ""
                }
            );
        }
        if let Some(a) = series.get(&ours) {
            for (peer, b) in series.iter().filter(|(s, _)| **s != ours) {
                let med = |m: &BTreeMap<u32, &Record>| {
                    spread(&m.values().map(|r| r.msgs_per_s).collect::<Vec<_>>())
                        .map_or(0.0, |s| s.median)
                };
                let (x, y) = (med(a), med(b));
                if y > 0.0 {
                    let _ = writeln!(
                        out,
                        "  throughput rocketraft / {}: {:.2}x",
                        series_name(*peer),
                        x / y
                    );
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spread_is_median_min_max() {
        let s = spread(&[3.0, 1.0, 2.0]).expect("values");
        assert_eq!((s.median, s.min, s.max, s.n), (2.0, 1.0, 3.0, 3));
        assert_eq!(spread(&[1.0, 3.0]).expect("values").median, 2.0);
        assert!(spread(&[]).is_none());
    }

    fn record(system: SystemKind, durability: Durability, round: u32, msgs_per_s: f64) -> Record {
        let cell = crate::plan::cells(crate::plan::PlanName::Ci, system, None).remove(0);
        let line = serde_json::json!({
            "kind": "cell", "run": "t", "round": round, "system": system, "durability": durability,
            "axis": cell.axis, "mode": cell.mode, "size": cell.size, "producers": cell.producers,
            "window": cell.window, "batch": cell.batch, "count": cell.count, "max_secs": cell.max_secs,
            "rate_fraction": null, "consumers": 0, "rate": null, "messages": 1000, "errors": 0,
            "unsent": 0, "first_error": null, "seconds": 1.0, "msgs_per_s": msgs_per_s,
            "mb_per_s": 1.0, "latency": "ack", "p50_us": 1000, "p99_us": 2000, "p999_us": 3000,
            "max_us": 4000, "server_cpu_us_per_msg": 10.0, "aux_cpu_us_per_msg": 0.0,
            "client_cpu_us_per_msg": 5.0, "server_rss_peak_mib": [100.0, 120.0, 110.0],
            "server_rss_mib": [90.0, 90.0, 90.0], "disk": "vda", "disk_flushes": 10,
            "msgs_per_flush": 100.0, "server_write_bytes_per_msg": 3000.0, "busy_cores": 1.5,
            "bench_cores": 1.45, "interfered": false, "fill_msgs_per_s": null
        });
        serde_json::from_value(line).expect("a record")
    }

    #[test]
    fn ratios_pair_rounds_and_take_the_median() {
        let ours = (SystemKind::Rocketraft, Durability::Fsync);
        let mut cells = Vec::new();
        for (round, a, b) in [
            (1, 3000.0, 1000.0),
            (2, 4000.0, 1000.0),
            (3, 2000.0, 2000.0),
        ] {
            cells.push(record(ours.0, ours.1, round, a));
            cells.push(record(SystemKind::Nats, Durability::Fsync, round, b));
        }
        let g = group(&cells);
        let key = &g.keys[0];
        let row = ratio_row(key, &g.by[key], ours, (SystemKind::Nats, Durability::Fsync))
            .expect("both systems ran the cell");
        // Per-round ratios 3, 4 and 1: median 3, range 1-4; latencies and CPU are equal.
        assert!(
            row.contains("| 3.00x (1.00x–4.00x) | 1.00x | 1.00x | 1.00x |"),
            "{row}"
        );
        let md = markdown(
            &Results {
                cells,
                calibration: vec![],
            },
            "t",
            "",
            &[],
        );
        assert!(
            md.contains("No RabbitMQ quorum queue cells in this run."),
            "{md}"
        );
        assert!(
            md.contains("rocketraft has no no-fsync mode yet")
                || md.contains("No NATS (default, no fsync) cells"),
            "{md}"
        );
    }

    #[test]
    fn rates_get_thousands_separators() {
        assert_eq!(fmt_rate(1234567.0), "1,234,567");
        assert_eq!(fmt_rate(999.0), "999");
        assert_eq!(fmt_rate(12.34), "12.3");
    }
}
