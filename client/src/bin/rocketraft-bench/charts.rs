//! PNG charts of a run (medians over rounds), one line per system:
//!
//! - `throughput_by_size.png`: msgs/s and MB/s of the closed-loop cells at 128 B, 1 KiB and
//!   16 KiB (4 producers x window 1024);
//! - `latency_percentiles.png`: p50/p99/p99.9/max of one message in flight and of the base
//!   cell;
//! - `latency_open_loop.png`: p50 and p99 at 25/50/75 % of each system's own maximum.
//!
//! plotters is built without fontconfig (feature `ab_glyph`), so text needs a font file:
//! DejaVu Sans (Debian `fonts-dejavu-core`, installed by scripts/setup.sh).

use std::path::Path;
use std::sync::{Mutex, PoisonError};

use anyhow::{Context, anyhow};
use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::register_font;

use crate::plan::{BASE_PRODUCERS, BASE_WINDOW, Mode};
use crate::report::{Results, Series, series_name, spread};
use crate::run::Record;

const FONT_PATH: &str = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf";
const FONT: &str = "sans-serif";

static FONT_LOADED: Mutex<bool> = Mutex::new(false);

fn load_font() -> anyhow::Result<()> {
    let mut loaded = FONT_LOADED.lock().unwrap_or_else(PoisonError::into_inner);
    if *loaded {
        return Ok(());
    }
    let bytes = std::fs::read(FONT_PATH).with_context(|| {
        format!("reading font {FONT_PATH} for the charts (Debian package fonts-dejavu-core; see scripts/setup.sh)")
    })?;
    // plotters keeps the font for 'static: one small leak per process.
    let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
    register_font(FONT, FontStyle::Normal, bytes)
        .map_err(|_| anyhow!("font {FONT_PATH} is not a TrueType font"))?;
    *loaded = true;
    Ok(())
}

fn colour(s: Series) -> RGBColor {
    use crate::run::Durability::*;
    use crate::systems::SystemKind::*;
    match s {
        (Rocketraft, Fsync) => RGBColor(31, 119, 180),
        (Rocketraft, Nofsync) => RGBColor(23, 190, 207),
        (Nats, Fsync) => RGBColor(44, 160, 44),
        (Nats, Nofsync) => RGBColor(188, 189, 34),
        (Rabbitmq, _) => RGBColor(255, 127, 14),
    }
}

/// One line of a chart: a series and its points (x index, y).
type Line = (Series, Vec<(f64, f64)>);

/// Writes the charts into `dir`; returns the file names written (charts without data are
/// left out).
pub fn write_all(results: &Results, dir: &Path) -> anyhow::Result<Vec<String>> {
    load_font()?;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut written = Vec::new();

    let sizes = [128usize, 1024, 16 * 1024];
    let by_size = |field: fn(&Record) -> f64| -> Vec<Line> {
        lines(results, |r| {
            let base_shape = r.cell.mode == Mode::Closed
                && r.cell.producers == BASE_PRODUCERS
                && r.cell.window == BASE_WINDOW
                && r.cell.batch == 1;
            let x = sizes.iter().position(|s| *s == r.cell.size)?;
            base_shape.then(|| (x as f64, field(r)))
        })
    };
    let msgs = by_size(|r| r.msgs_per_s);
    if !msgs.is_empty() {
        let name = "throughput_by_size.png";
        let path = dir.join(name);
        let root = BitMapBackend::new(&path, (1400, 560)).into_drawing_area();
        root.fill(&WHITE)?;
        let halves = root.split_evenly((1, 2));
        let labels = ["128 B", "1 KiB", "16 KiB"];
        panel(
            &halves[0],
            "msgs/s by message size (4 producers x window 1024)",
            &labels,
            "msgs/s",
            &msgs,
        )?;
        panel(
            &halves[1],
            "MB/s by message size",
            &labels,
            "MB/s",
            &by_size(|r| r.mb_per_s),
        )?;
        root.present()?;
        written.push(name.to_string());
    }

    let pct_labels = ["p50", "p99", "p99.9", "max"];
    let pcts = |pick: fn(&Record) -> bool| -> Vec<Line> {
        let mut out: Vec<Line> = Vec::new();
        for (i, f) in [
            (|r: &Record| r.p50_us) as fn(&Record) -> u64,
            |r: &Record| r.p99_us,
            |r: &Record| r.p999_us,
            |r: &Record| r.max_us,
        ]
        .iter()
        .enumerate()
        {
            for (s, pts) in lines(results, |r| {
                pick(r).then(|| (i as f64, f(r) as f64 / 1000.0))
            }) {
                match out.iter_mut().find(|(x, _)| *x == s) {
                    Some((_, v)) => v.extend(pts),
                    None => out.push((s, pts)),
                }
            }
        }
        out
    };
    let one = pcts(|r| r.cell.mode == Mode::Closed && r.cell.producers == 1 && r.cell.window == 1);
    let base = pcts(|r| r.cell.axis == "base");
    if !one.is_empty() || !base.is_empty() {
        let name = "latency_percentiles.png";
        let path = dir.join(name);
        let root = BitMapBackend::new(&path, (1400, 560)).into_drawing_area();
        root.fill(&WHITE)?;
        let halves = root.split_evenly((1, 2));
        panel(
            &halves[0],
            "send-to-ack latency, one message in flight",
            &pct_labels,
            "ms",
            &one,
        )?;
        panel(
            &halves[1],
            "send-to-ack latency, 4 producers x window 1024",
            &pct_labels,
            "ms",
            &base,
        )?;
        root.present()?;
        written.push(name.to_string());
    }

    let fractions = [0.25, 0.5, 0.75];
    let open = |f: fn(&Record) -> u64| -> Vec<Line> {
        lines(results, |r| {
            let x = fractions
                .iter()
                .position(|q| Some(*q) == r.cell.rate_fraction)?;
            (r.cell.mode == Mode::Open).then(|| (x as f64, f(r) as f64 / 1000.0))
        })
    };
    let p99 = open(|r| r.p99_us);
    if !p99.is_empty() {
        let name = "latency_open_loop.png";
        let path = dir.join(name);
        let root = BitMapBackend::new(&path, (1400, 560)).into_drawing_area();
        root.fill(&WHITE)?;
        let halves = root.split_evenly((1, 2));
        let labels = ["25 %", "50 %", "75 %"];
        panel(
            &halves[0],
            "open loop p50 (from intended send), by load",
            &labels,
            "ms",
            &open(|r| r.p50_us),
        )?;
        panel(
            &halves[1],
            "open loop p99, by load (fraction of own max)",
            &labels,
            "ms",
            &p99,
        )?;
        root.present()?;
        written.push(name.to_string());
    }
    Ok(written)
}

/// For every series, the median over rounds of `point` at each x.
fn lines(results: &Results, point: impl Fn(&Record) -> Option<(f64, f64)>) -> Vec<Line> {
    let mut raw: std::collections::BTreeMap<Series, std::collections::BTreeMap<u64, Vec<f64>>> =
        Default::default();
    for r in &results.cells {
        if let Some((x, y)) = point(r) {
            raw.entry((r.system, r.durability))
                .or_default()
                .entry(x.to_bits())
                .or_default()
                .push(y);
        }
    }
    raw.into_iter()
        .map(|(s, xs)| {
            let pts = xs
                .into_iter()
                .filter_map(|(x, ys)| Some((f64::from_bits(x), spread(&ys)?.median)))
                .collect();
            (s, pts)
        })
        .collect()
}

/// One chart: categories on x, a log scale on y, a line with points per series.
fn panel(
    area: &DrawingArea<BitMapBackend, Shift>,
    title: &str,
    labels: &[&str],
    y_label: &str,
    data: &[Line],
) -> anyhow::Result<()> {
    let ys = data
        .iter()
        .flat_map(|(_, p)| p.iter().map(|(_, y)| *y))
        .filter(|y| *y > 0.0);
    let (lo, hi) = ys.fold((f64::MAX, f64::MIN), |(lo, hi), y| (lo.min(y), hi.max(y)));
    let (lo, hi) = if lo > hi {
        (0.1, 10.0)
    } else {
        (lo / 2.0, hi * 3.0)
    };
    let n = labels.len();
    let labels: Vec<String> = labels.iter().map(|s| s.to_string()).collect();
    let mut chart = ChartBuilder::on(area)
        .caption(title, (FONT, 20))
        .margin(15)
        .x_label_area_size(35)
        .y_label_area_size(70)
        .build_cartesian_2d(-0.3..(n as f64 - 0.7), (lo..hi).log_scale())?;
    chart
        .configure_mesh()
        .x_labels(n)
        .x_label_formatter(&|x| {
            let i = x.round();
            if (x - i).abs() < 0.01 && i >= 0.0 {
                labels.get(i as usize).cloned().unwrap_or_default()
            } else {
                String::new()
            }
        })
        .y_desc(y_label)
        .label_style((FONT, 14))
        .draw()?;
    for (s, pts) in data {
        let c = colour(*s);
        let pts: Vec<(f64, f64)> = pts.iter().copied().filter(|(_, y)| *y > 0.0).collect();
        chart
            .draw_series(LineSeries::new(pts.clone(), c.stroke_width(2)))?
            .label(series_name(*s))
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], c.stroke_width(2)));
        chart.draw_series(pts.iter().map(|p| Circle::new(*p, 4, c.filled())))?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .label_font((FONT, 14))
        .draw()?;
    Ok(())
}
