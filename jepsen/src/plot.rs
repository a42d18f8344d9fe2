//! PNG plots of one run: completions per second and per-op latency over time, with the
//! nemesis's fault windows shaded behind them, so a reader sees what each fault did to the
//! clients (a gap in throughput, a burst of `info`, slow ops after a restart).
//!
//! plotters is built without fontconfig (feature `ab_glyph`), so text needs a font file:
//! DejaVu Sans is read once per process and registered as `sans-serif`.

use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError};

use anyhow::{Context, Result, anyhow};
use plotters::coord::types::RangedCoordf64;
use plotters::prelude::*;
use plotters::style::register_font;

use crate::history::{F, Op, OpType, pair_refs};
use crate::nemesis::{FaultKind, Window};

const FONT_PATH: &str = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf";
const FONT_PACKAGE: &str = "fonts-dejavu-core";
const FONT: &str = "sans-serif";
const SIZE_PX: (u32, u32) = (1200, 600);

/// The throughput plot's lines, in legend order, each with a fixed colour so runs compare at
/// a glance. Assign is left out: it is bookkeeping, not traffic. Drain (the final reads after
/// the faults) gets its own lines, to show when the run's last reads happened. The register
/// workload's writes and reads take the colours of sends and polls: a run has one or the
/// other.
const THROUGHPUT_SERIES: [(F, OpType, RGBColor); 14] = [
    (F::Send, OpType::Ok, RGBColor(31, 119, 180)),
    (F::Send, OpType::Info, RGBColor(255, 127, 14)),
    (F::Poll, OpType::Ok, RGBColor(44, 160, 44)),
    (F::Poll, OpType::Fail, RGBColor(214, 39, 40)),
    (F::Send, OpType::Fail, RGBColor(148, 103, 189)),
    (F::Poll, OpType::Info, RGBColor(140, 86, 75)),
    (F::Drain, OpType::Ok, RGBColor(227, 119, 194)),
    (F::Drain, OpType::Info, RGBColor(127, 127, 127)),
    (F::Drain, OpType::Fail, RGBColor(188, 189, 34)),
    (F::Write, OpType::Ok, RGBColor(31, 119, 180)),
    (F::Write, OpType::Info, RGBColor(255, 127, 14)),
    (F::Write, OpType::Fail, RGBColor(148, 103, 189)),
    (F::Read, OpType::Ok, RGBColor(44, 160, 44)),
    (F::Read, OpType::Fail, RGBColor(214, 39, 40)),
];

/// One completed op.
struct Completion {
    f: F,
    kind: OpType,
    end_s: f64,
    latency_ms: f64,
}

/// Writes `throughput.png` and `latency.png` into `dir` and returns their paths. Ops that never
/// completed are left out; the time axis covers every completion and every fault window.
pub fn plot_run(dir: &Path, ops: &[Op], windows: &[Window]) -> Result<Vec<PathBuf>> {
    load_font()?;
    let done = completions(ops);
    let end_s = done
        .iter()
        .map(|c| c.end_s)
        .chain(windows.iter().map(|w| ns_to_s(w.end_ns)))
        .fold(1.0, f64::max)
        .ceil();

    let throughput = dir.join("throughput.png");
    draw_throughput(&throughput, &done, windows, end_s)
        .with_context(|| format!("plot {}", throughput.display()))?;
    let latency = dir.join("latency.png");
    draw_latency(&latency, &done, windows, end_s)
        .with_context(|| format!("plot {}", latency.display()))?;
    Ok(vec![throughput, latency])
}

/// True once the font is registered: plotters keeps it for the life of the process.
static FONT_LOADED: Mutex<bool> = Mutex::new(false);

fn load_font() -> Result<()> {
    let mut loaded = FONT_LOADED.lock().unwrap_or_else(PoisonError::into_inner);
    if *loaded {
        return Ok(());
    }
    let path = Path::new(FONT_PATH);
    // plotters wants the font for 'static: one leak of ~750 KB per process.
    let bytes: &'static [u8] = Box::leak(read_font(path)?.into_boxed_slice());
    register_font(FONT, FontStyle::Normal, bytes)
        .map_err(|_| anyhow!("font {} is not a TrueType font", path.display()))?;
    *loaded = true;
    Ok(())
}

fn read_font(path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).with_context(|| {
        format!(
            "read font {} for the plots (install the Debian package {FONT_PACKAGE}, see scripts/setup.sh)",
            path.display()
        )
    })
}

fn completions(ops: &[Op]) -> Vec<Completion> {
    pair_refs(ops)
        .into_iter()
        .filter_map(|(invoke, done)| {
            let done = done?;
            Some(Completion {
                f: done.f,
                kind: done.kind,
                end_s: ns_to_s(done.time_ns),
                latency_ms: done.time_ns.saturating_sub(invoke.time_ns) as f64 / 1e6,
            })
        })
        .collect()
}

fn draw_throughput(path: &Path, done: &[Completion], windows: &[Window], end_s: f64) -> Result<()> {
    // One-second buckets by completion time; empty buckets stay 0 so an outage shows as a gap.
    let buckets = end_s as usize;
    let mut counts = vec![vec![0u32; buckets]; THROUGHPUT_SERIES.len()];
    for c in done {
        if let Some(i) = THROUGHPUT_SERIES
            .iter()
            .position(|&(f, kind, _)| (f, kind) == (c.f, c.kind))
        {
            counts[i][(c.end_s as usize).min(buckets - 1)] += 1;
        }
    }
    let count_max = counts.iter().flatten().copied().max().unwrap_or(0).max(1);
    // Headroom above the busiest second keeps the legend (upper right) off the lines.
    let y_max = f64::from(count_max) * 1.5;

    let root = BitMapBackend::new(path, SIZE_PX).into_drawing_area();
    root.fill(&WHITE)?;
    let title = "Throughput: completed ops per second, by op and outcome";
    let mut chart = chart_builder(&root, title).build_cartesian_2d(0.0..end_s, 0.0..y_max)?;
    shade_faults(&mut chart, windows, (0.0, y_max))?;
    chart
        .configure_mesh()
        .x_desc("time since start of run (s)")
        .y_desc("completions per second (ops/s, 1 s buckets)")
        .x_label_formatter(&axis_number)
        .y_label_formatter(&axis_number)
        .axis_desc_style((FONT, 18))
        .label_style((FONT, 15))
        .draw()?;
    for (&(f, kind, colour), counts) in THROUGHPUT_SERIES.iter().zip(&counts) {
        if counts.iter().all(|&n| n == 0) {
            continue;
        }
        // Each point sits at the middle of its bucket.
        let points = counts
            .iter()
            .enumerate()
            .map(|(bucket, &n)| (bucket as f64 + 0.5, f64::from(n)));
        chart
            .draw_series(LineSeries::new(points, colour.stroke_width(2)))?
            .label(series_label(f, kind))
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 20, y)], colour.stroke_width(2)));
    }
    draw_legend(&mut chart)?;
    root.present()?;
    Ok(())
}

fn draw_latency(path: &Path, done: &[Completion], windows: &[Window], end_s: f64) -> Result<()> {
    let points: Vec<&Completion> = done
        .iter()
        .filter(|c| matches!(c.f, F::Send | F::Poll | F::Write | F::Read))
        .collect();
    // Whole decades on the log axis, with at least one empty decade above the slowest op for
    // the legend; latencies below 1 µs are drawn at the floor.
    let floor_ms: f64 = 1e-3;
    let (lo_ms, hi_ms) = points.iter().fold((f64::MAX, floor_ms), |(lo, hi), c| {
        (lo.min(c.latency_ms), hi.max(c.latency_ms))
    });
    let y_lo = 10f64.powf(lo_ms.clamp(floor_ms, 1.0).log10().floor());
    let y_hi = 10f64.powf(hi_ms.log10().floor() + 2.0);

    let root = BitMapBackend::new(path, SIZE_PX).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = chart_builder(&root, "Latency of each client op, by outcome")
        .build_cartesian_2d(0.0..end_s, (y_lo..y_hi).log_scale())?;
    shade_faults(&mut chart, windows, (y_lo, y_hi))?;
    chart
        .configure_mesh()
        .x_desc("completion time since start of run (s)")
        .y_desc("latency (ms, log scale)")
        .x_label_formatter(&axis_number)
        .y_label_formatter(&axis_number)
        .axis_desc_style((FONT, 18))
        .label_style((FONT, 15))
        .draw()?;
    // Fail and info drawn last: they are rarer and the reason to look.
    for kind in [OpType::Ok, OpType::Info, OpType::Fail] {
        let style = outcome_colour(kind).mix(0.7).filled();
        for f in [F::Send, F::Poll, F::Write, F::Read] {
            let at: Vec<(f64, f64)> = points
                .iter()
                .filter(|c| (c.f, c.kind) == (f, kind))
                .map(|c| (c.end_s, c.latency_ms.max(y_lo)))
                .collect();
            if at.is_empty() {
                continue;
            }
            let label = series_label(f, kind);
            // Sends and writes are dots, polls and reads triangles, so outcome (colour) and op
            // stay separable.
            if matches!(f, F::Send | F::Write) {
                chart
                    .draw_series(at.into_iter().map(|p| Circle::new(p, 2, style)))?
                    .label(label)
                    .legend(move |(x, y)| Circle::new((x + 10, y), 4, style));
            } else {
                chart
                    .draw_series(at.into_iter().map(|p| TriangleMarker::new(p, 3, style)))?
                    .label(label)
                    .legend(move |(x, y)| TriangleMarker::new((x + 10, y), 5, style));
            }
        }
    }
    draw_legend(&mut chart)?;
    root.present()?;
    Ok(())
}

fn chart_builder<'a, 'b>(
    root: &'a DrawingArea<BitMapBackend<'b>, plotters::coord::Shift>,
    title: &str,
) -> ChartBuilder<'a, 'b, BitMapBackend<'b>> {
    let mut builder = ChartBuilder::on(root);
    builder
        .caption(title, (FONT, 24))
        .margin(15)
        .x_label_area_size(50)
        .y_label_area_size(80);
    builder
}

/// One translucent band per fault window, the full height of the plot, coloured by kind, with
/// one legend entry per kind that occurred.
fn shade_faults<Y: Ranged<ValueType = f64>>(
    chart: &mut ChartContext<'_, BitMapBackend<'_>, Cartesian2d<RangedCoordf64, Y>>,
    windows: &[Window],
    (y_lo, y_hi): (f64, f64),
) -> Result<()> {
    for kind in FaultKind::ALL {
        let colour = fault_colour(kind);
        let bands: Vec<_> = windows
            .iter()
            .filter(|w| w.fault.kind == kind)
            .map(|w| {
                let x = (ns_to_s(w.start_ns), ns_to_s(w.end_ns));
                Rectangle::new([(x.0, y_lo), (x.1, y_hi)], colour.mix(0.18).filled())
            })
            .collect();
        if bands.is_empty() {
            continue;
        }
        chart
            .draw_series(bands)?
            .label(format!("fault: {}", kind.name()))
            .legend(move |(x, y)| {
                Rectangle::new([(x, y - 6), (x + 20, y + 6)], colour.mix(0.35).filled())
            });
    }
    Ok(())
}

fn draw_legend<'a, Y: Ranged>(
    chart: &mut ChartContext<'a, BitMapBackend<'a>, Cartesian2d<RangedCoordf64, Y>>,
) -> Result<()> {
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .label_font((FONT, 15))
        .draw()?;
    Ok(())
}

fn fault_colour(kind: FaultKind) -> RGBColor {
    match kind {
        FaultKind::Kill => RGBColor(90, 90, 90),
        FaultKind::Pause => RGBColor(230, 170, 0),
        FaultKind::Partition => RGBColor(110, 60, 200),
        FaultKind::Membership => RGBColor(0, 150, 136),
        FaultKind::LoseUnfsynced => RGBColor(200, 30, 30),
        FaultKind::PauseKill => RGBColor(150, 75, 0),
        FaultKind::Clock => RGBColor(30, 120, 220),
        FaultKind::NameserverPartition => RGBColor(200, 60, 160),
    }
}

fn outcome_colour(kind: OpType) -> RGBColor {
    match kind {
        OpType::Ok => RGBColor(31, 119, 180),
        OpType::Info => RGBColor(255, 127, 14),
        OpType::Fail | OpType::Invoke => RGBColor(214, 39, 40),
    }
}

fn series_label(f: F, kind: OpType) -> String {
    let f = match f {
        F::Send => "send",
        F::Poll => "poll",
        F::Assign => "assign",
        F::Drain => "drain",
        F::Write => "write",
        F::Read => "read",
        F::Receive => "receive",
        F::Ack => "ack",
        F::Offset => "offset",
    };
    let kind = match kind {
        OpType::Invoke => "invoke",
        OpType::Ok => "ok",
        OpType::Info => "info",
        OpType::Fail => "fail",
    };
    format!("{f} {kind}")
}

/// "10" rather than plotters' "10.0"; one decimal when the tick is not whole.
fn axis_number(v: &f64) -> String {
    if v.fract() == 0.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.1}")
    }
}

fn ns_to_s(ns: u64) -> f64 {
    ns as f64 / 1e9
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::Mop;
    use crate::nemesis::Fault;

    const PNG_SIGNATURE: [u8; 8] = [0x89, b'P', b'N', b'G', b'\r', b'\n', 0x1a, b'\n'];

    fn op(time_ms: u64, process: u64, kind: OpType, f: F) -> Op {
        let value = match f {
            F::Send => vec![Mop::Send {
                key: 0,
                value: process,
                offset: None,
            }],
            _ => vec![Mop::Poll {
                key: 0,
                reads: Vec::new(),
            }],
        };
        Op {
            index: 0,
            time_ns: time_ms * 1_000_000,
            process,
            kind,
            f,
            value,
            assign: Vec::new(),
            node: None,
            error: None,
        }
    }

    /// Ten seconds of sends (20/s) and polls (~7/s); during a kill from 3 s to 6 s sends time
    /// out (info) and polls fail.
    fn history() -> (Vec<Op>, Vec<Window>) {
        let mut ops = Vec::new();
        let mut process = 0;
        for start_ms in (0..10_000).step_by(50) {
            let faulted = (3_000..6_000).contains(&start_ms);
            let mut add = |f, kind, latency_ms| {
                process += 1;
                ops.push(op(start_ms, process, OpType::Invoke, f));
                ops.push(op(start_ms + latency_ms, process, kind, f));
            };
            match faulted {
                false => add(F::Send, OpType::Ok, 2 + start_ms % 7),
                true => add(F::Send, OpType::Info, 1_000),
            }
            if start_ms % 150 == 0 {
                match faulted {
                    false => add(F::Poll, OpType::Ok, 5 + start_ms % 11),
                    true => add(F::Poll, OpType::Fail, 40),
                }
            }
        }
        ops.sort_by_key(|o| o.time_ns);
        let window = Window {
            start_ns: 3_000_000_000,
            end_ns: 6_000_000_000,
            fault: Fault {
                kind: FaultKind::Kill,
                shape: "leader".into(),
                nodes: vec![1],
                drops: Vec::new(),
                offsets_ms: Vec::new(),
                outcome: None,
                effective: true,
            },
        };
        (ops, vec![window])
    }

    #[test]
    fn plot_run_writes_two_pngs() {
        let dir = tempfile::tempdir().unwrap();
        let (ops, windows) = history();
        let paths = plot_run(dir.path(), &ops, &windows).unwrap();
        assert_eq!(
            paths,
            [
                dir.path().join("throughput.png"),
                dir.path().join("latency.png")
            ]
        );
        for path in &paths {
            let bytes = std::fs::read(path).unwrap();
            assert!(
                bytes.starts_with(&PNG_SIGNATURE),
                "{} is not a PNG",
                path.display()
            );
            assert!(
                bytes.len() > 8 * 1024,
                "{} is only {} bytes",
                path.display(),
                bytes.len()
            );
        }
    }

    #[test]
    fn missing_font_names_file_and_package() {
        let err = read_font(Path::new("/nonexistent/DejaVuSans.ttf")).unwrap_err();
        let message = format!("{err:#}");
        assert!(message.contains("/nonexistent/DejaVuSans.ttf"), "{message}");
        assert!(message.contains(FONT_PACKAGE), "{message}");
    }
}
