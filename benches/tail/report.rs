//! Writes `BENCHMARKS.md` (tables) and SVG plots (latency against load, one line per
//! scheduler, for the short and the long class of each workload) from a run of
//! `benches/tail.rs`. Used by `cargo bench --bench tail -- --report`.

use std::fmt::Write as _;
use std::path::Path;

use plotters::prelude::*;

/// One measured point.
pub struct Row {
    pub workload: usize,
    pub scheduler: usize,
    pub load: f64,
    /// Per class: p50, p99, p99.9 in µs.
    pub classes: Vec<[f64; 3]>,
    pub generator_late_p99_us: f64,
    /// CPU the generator used per request, µs.
    pub generator_cpu_us: f64,
    /// CPU the process used per request beyond the calibrated work, µs.
    pub cpu_overhead_us: f64,
}

/// Scheduler indices, in the order of `benches/tail.rs`.
const MICROSCHED: usize = 0;
const MICROSCHED_FCFS: usize = 1;
const RAYON: usize = 2;

/// microsched against the FCFS pools at one load of one workload, or the worst of those
/// over a sweep.
pub struct Fairness {
    /// Long-class p99 over the better of the two FCFS pools' (microsched's with preemption
    /// off, and rayon).
    pub long_p99_ratio: f64,
    /// The same for the long-class p50 (in a summary: at load 0.3).
    pub long_p50_ratio: f64,
    /// CPU overhead per request over rayon's.
    pub cpu_ratio: f64,
    /// The generator's lateness p99 over its lateness under rayon.
    pub late_ratio: f64,
}

impl Fairness {
    /// The ratios at `load` of workload `w`, if the three schedulers ran there and the
    /// workload has a long class.
    pub fn at(rows: &[Row], w: usize, load: f64) -> Option<Fairness> {
        let find = |s: usize| {
            rows.iter()
                .find(|r| r.workload == w && r.scheduler == s && (r.load - load).abs() < 1e-9)
        };
        let (ours, fcfs, rayon) = (find(MICROSCHED)?, find(MICROSCHED_FCFS)?, find(RAYON)?);
        let long = |r: &Row, p: usize| r.classes.get(1).map_or(f64::NAN, |c| c[p]);
        let best = |p: usize| long(fcfs, p).min(long(rayon, p));
        Some(Fairness {
            long_p99_ratio: long(ours, 1) / best(1),
            long_p50_ratio: long(ours, 0) / best(0),
            cpu_ratio: ours.cpu_overhead_us / rayon.cpu_overhead_us,
            late_ratio: ours.generator_late_p99_us / rayon.generator_late_p99_us,
        })
    }

    /// The SUMMARY's fields for workload `w`: the largest long-class p99 ratio over loads
    /// 0.1-0.8, the long p50 ratio at 0.3, and the largest CPU and lateness ratios over
    /// loads 0.3-0.8 (below 0.3 the overhead is a few µs over a tiny denominator).
    pub fn summary(rows: &[Row], w: usize, loads: &[f64]) -> Fairness {
        let within = |lo: f64, hi: f64| {
            loads
                .iter()
                .filter(move |&&l| l >= lo - 1e-9 && l <= hi + 1e-9)
                .filter_map(move |&l| Fairness::at(rows, w, l))
        };
        let max = |v: &mut dyn Iterator<Item = f64>| v.fold(f64::NAN, f64::max);
        Fairness {
            long_p99_ratio: max(&mut within(0.1, 0.8).map(|f| f.long_p99_ratio)),
            long_p50_ratio: max(&mut within(0.3, 0.3).map(|f| f.long_p50_ratio)),
            cpu_ratio: max(&mut within(0.3, 0.8).map(|f| f.cpu_ratio)),
            late_ratio: max(&mut within(0.3, 0.8).map(|f| f.late_ratio)),
        }
    }
}

/// Everything the report shows.
pub struct Report<'a> {
    pub workloads: &'a [super::load::Workload],
    pub schedulers: &'a [&'static str],
    pub loads: &'a [f64],
    pub rows: &'a [Row],
    pub env: &'a str,
    pub setup: &'a str,
    pub summary: &'a str,
    /// Further sections, in Markdown, after the summary (the spread over traces, the
    /// runaway run).
    pub sections: &'a [String],
}

const COLOURS: [RGBColor; 5] = [
    RGBColor(200, 30, 30),
    RGBColor(30, 90, 200),
    RGBColor(40, 150, 60),
    RGBColor(150, 90, 20),
    RGBColor(120, 40, 160),
];

impl Report<'_> {
    fn row(&self, w: usize, s: usize, load: f64) -> Option<&Row> {
        self.rows
            .iter()
            .find(|r| r.workload == w && r.scheduler == s && (r.load - load).abs() < 1e-9)
    }

    /// Writes `BENCHMARKS.md` into `root` and the plots into `root/docs/tail/`.
    pub fn write(&self, root: &Path) -> Result<(), Box<dyn std::error::Error>> {
        let plots = root.join("docs").join("tail");
        std::fs::create_dir_all(&plots)?;
        let mut md = String::new();
        writeln!(md, "# Tail latency under heavy-tailed load")?;
        writeln!(md)?;
        writeln!(
            md,
            "Written by `cargo bench --bench tail -- --report` (see `benches/tail.rs` for the \
             method: open-loop Poisson arrivals, latency from the scheduled arrival, calibrated \
             work, the first 10 % of requests discarded as warm-up and the last 10 % as \
             cool-down). Every scheduler ran the same requests, in turns, in one run."
        )?;
        writeln!(md)?;
        writeln!(md, "- {}", self.setup)?;
        writeln!(md, "- Environment: {}", self.env)?;
        writeln!(md)?;
        writeln!(md, "```text\n{}\n```", self.summary)?;
        for section in self.sections {
            writeln!(md)?;
            writeln!(md, "{section}")?;
        }
        self.fairness(&mut md, &plots)?;
        for (w, workload) in self.workloads.iter().enumerate() {
            let slug = slug(workload.name);
            writeln!(md)?;
            writeln!(md, "## {}", workload.name)?;
            writeln!(md)?;
            writeln!(
                md,
                "Short-class p99 target: {:.0} µs (fixed before the run). Latencies in µs; \
                 `inf` means requests still unfinished when the run gave up waiting.",
                workload.short_p99_target_us
            )?;
            writeln!(md)?;
            for (c, class) in workload.classes.iter().enumerate() {
                let file = format!("{slug}-{}.svg", class.name);
                self.plot(w, c, &plots.join(&file))?;
                writeln!(
                    md,
                    "![{} class, p99 against load](docs/tail/{file})",
                    class.name
                )?;
                writeln!(md)?;
                self.table(&mut md, w, c)?;
                writeln!(md)?;
                writeln!(md, "Cells: {} class p50 / p99 / p99.9.", class.name)?;
                writeln!(md)?;
            }
            writeln!(
                md,
                "The generator, per load: p99 of how late it submitted (µs), and in brackets \
                 its CPU per request (µs; mostly the timer wake-up of each absolute-deadline \
                 sleep). Lateness is charged to the scheduler: one that starves the \
                 generator's core delays its own arrivals."
            )?;
            writeln!(md)?;
            for (s, name) in self.schedulers.iter().enumerate() {
                let late: Vec<String> = self
                    .loads
                    .iter()
                    .filter_map(|&l| self.row(w, s, l))
                    .map(|r| format!("{:.0} ({:.1})", r.generator_late_p99_us, r.generator_cpu_us))
                    .collect();
                writeln!(md, "- {name}: {}", late.join(", "))?;
            }
        }
        std::fs::write(root.join("BENCHMARKS.md"), md)?;
        Ok(())
    }

    /// The bimodal workload's (workload 0) long class and CPU cost against the FCFS pools,
    /// per load: the ratios, and a plot of the CPU overhead per request.
    fn fairness(&self, md: &mut String, plots: &Path) -> Result<(), Box<dyn std::error::Error>> {
        let Some(workload) = self.workloads.first() else {
            return Ok(());
        };
        if workload.classes.len() < 2 {
            return Ok(());
        }
        writeln!(md)?;
        writeln!(md, "## Long class and CPU cost ({})", workload.name)?;
        writeln!(md)?;
        writeln!(
            md,
            "Per load: microsched's long-class p99 and p50 over the better of the two FCFS \
             pools' (microsched with preemption off, rayon); the CPU the whole process used \
             per request beyond the calibrated work (µs: idle spins, wake-ups, timer \
             expiries, handoffs, thread starts, the load generator), per scheduler, and \
             microsched's over rayon's; and the generator's lateness p99 (µs) under \
             microsched and rayon."
        )?;
        writeln!(md)?;
        writeln!(
            md,
            "| load | long p99 ratio | long p50 ratio | CPU µs/request: microsched / FCFS / rayon | CPU ratio vs rayon | generator late p99: microsched / rayon |"
        )?;
        writeln!(md, "|---|---|---|---|---|---|")?;
        for &load in self.loads {
            let (Some(f), Some(ours), Some(fcfs), Some(rayon)) = (
                Fairness::at(self.rows, 0, load),
                self.row(0, MICROSCHED, load),
                self.row(0, MICROSCHED_FCFS, load),
                self.row(0, RAYON, load),
            ) else {
                continue;
            };
            writeln!(
                md,
                "| {load:.2} | {:.2} | {:.2} | {:.0} / {:.0} / {:.0} | {:.2} | {:.0} / {:.0} |",
                f.long_p99_ratio,
                f.long_p50_ratio,
                ours.cpu_overhead_us,
                fcfs.cpu_overhead_us,
                rayon.cpu_overhead_us,
                f.cpu_ratio,
                ours.generator_late_p99_us,
                rayon.generator_late_p99_us
            )?;
        }
        writeln!(md)?;
        let slug = slug(workload.name);
        let file = format!("{slug}-cpu.svg");
        self.plot_cpu(&plots.join(&file))?;
        writeln!(
            md,
            "![CPU overhead per request against load](docs/tail/{file})"
        )?;
        writeln!(md)?;
        writeln!(
            md,
            "The long class's p99 against load is plotted with the workload's tables below."
        )?;
        Ok(())
    }

    /// CPU overhead per request of each scheduler against load, bimodal workload.
    fn plot_cpu(&self, path: &Path) -> Result<(), Box<dyn std::error::Error>> {
        let points = |s: usize| -> Vec<(f64, f64)> {
            self.loads
                .iter()
                .filter_map(|&l| self.row(0, s, l).map(|r| (l, r.cpu_overhead_us)))
                .filter(|(_, v)| v.is_finite())
                .collect()
        };
        let all: Vec<f64> = (0..self.schedulers.len())
            .flat_map(points)
            .map(|(_, v)| v)
            .collect();
        let hi = all.iter().copied().fold(10.0, f64::max) * 1.15;
        let lo = all.iter().copied().fold(0.0, f64::min).min(0.0);
        let root = SVGBackend::new(path, (760, 460)).into_drawing_area();
        root.fill(&WHITE)?;
        let mut chart = ChartBuilder::on(&root)
            .caption(
                format!(
                    "{}: process CPU per request beyond the work",
                    self.workloads[0].name
                ),
                ("sans-serif", 18),
            )
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(70)
            .build_cartesian_2d(0.0f64..1.0, lo..hi)?;
        chart
            .configure_mesh()
            .x_desc("load (fraction of capacity)")
            .y_desc("CPU overhead per request, µs")
            .draw()?;
        draw_lines(
            &mut chart,
            self.schedulers,
            points,
            SeriesLabelPosition::UpperRight,
        )?;
        root.present()?;
        Ok(())
    }

    /// A table of class `c`'s p50 / p99 / p99.9: one row per load, one column per scheduler.
    fn table(&self, md: &mut String, w: usize, c: usize) -> std::fmt::Result {
        write!(md, "| load |")?;
        for s in self.schedulers {
            write!(md, " {s} |")?;
        }
        writeln!(md)?;
        write!(md, "|---|")?;
        for _ in self.schedulers {
            write!(md, "---|")?;
        }
        writeln!(md)?;
        for &load in self.loads {
            write!(md, "| {load:.2} |")?;
            for s in 0..self.schedulers.len() {
                match self.row(w, s, load) {
                    Some(r) => {
                        let [p50, p99, p999] = r.classes[c];
                        write!(md, " {} / {} / {} |", us(p50), us(p99), us(p999))?
                    }
                    None => write!(md, " |")?,
                }
            }
            writeln!(md)?;
        }
        Ok(())
    }

    /// p99 of class `c` against load, one line per scheduler, log scale.
    fn plot(&self, w: usize, c: usize, path: &Path) -> Result<(), Box<dyn std::error::Error>> {
        let workload = &self.workloads[w];
        let class = &workload.classes[c];
        let points = |s: usize| -> Vec<(f64, f64)> {
            self.loads
                .iter()
                .filter_map(|&l| self.row(w, s, l).map(|r| (l, r.classes[c][1])))
                .filter(|(_, v)| v.is_finite() && *v > 0.0)
                .collect()
        };
        let all: Vec<f64> = (0..self.schedulers.len())
            .flat_map(points)
            .map(|(_, v)| v)
            .collect();
        // The target (short class) is always in range; unfinished points (infinite) are
        // left out of the lines, and the table shows them as `inf`.
        let target = if c == 0 {
            workload.short_p99_target_us
        } else {
            class.service_us
        };
        let lo = all.iter().copied().fold(target, f64::min).max(1.0) / 1.5;
        let hi = all.iter().copied().fold(target, f64::max) * 1.5;
        let root = SVGBackend::new(path, (760, 460)).into_drawing_area();
        root.fill(&WHITE)?;
        let mut chart = ChartBuilder::on(&root)
            .caption(
                format!("{}: {} class p99 latency", workload.name, class.name),
                ("sans-serif", 18),
            )
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(70)
            .build_cartesian_2d(0.0f64..1.0, (lo..hi).log_scale())?;
        chart
            .configure_mesh()
            .y_labels(8)
            .x_desc("load (fraction of capacity)")
            .y_desc("p99 latency, µs (log)")
            .draw()?;
        if c == 0 {
            let target = workload.short_p99_target_us;
            chart
                .draw_series(LineSeries::new(
                    vec![(0.0, target), (1.0, target)],
                    BLACK.mix(0.4).stroke_width(1),
                ))?
                .label("target")
                .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], BLACK.mix(0.4)));
        }
        draw_lines(
            &mut chart,
            self.schedulers,
            points,
            SeriesLabelPosition::UpperLeft,
        )?;
        root.present()?;
        Ok(())
    }
}

/// One line with dots per scheduler (those with points), and the legend at `legend`.
fn draw_lines<'a, Y: Ranged<ValueType = f64>>(
    chart: &mut ChartContext<
        'a,
        SVGBackend<'a>,
        Cartesian2d<plotters::coord::types::RangedCoordf64, Y>,
    >,
    schedulers: &[&'static str],
    points: impl Fn(usize) -> Vec<(f64, f64)>,
    legend: SeriesLabelPosition,
) -> Result<(), Box<dyn std::error::Error>> {
    for (s, name) in schedulers.iter().enumerate() {
        let colour = COLOURS[s % COLOURS.len()];
        let pts = points(s);
        if pts.is_empty() {
            continue;
        }
        chart
            .draw_series(LineSeries::new(pts.clone(), colour.stroke_width(2)))?
            .label(*name)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], colour));
        chart.draw_series(pts.into_iter().map(|p| Circle::new(p, 3, colour.filled())))?;
    }
    chart
        .configure_series_labels()
        .position(legend)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()?;
    Ok(())
}

fn us(v: f64) -> String {
    if v.is_finite() {
        format!("{v:.0}")
    } else {
        "inf".to_owned()
    }
}

fn slug(name: &str) -> String {
    let mut out = String::new();
    for ch in name.chars() {
        if ch.is_ascii_alphanumeric() {
            out.push(ch.to_ascii_lowercase());
        } else if !out.ends_with('-') {
            out.push('-');
        }
    }
    out.trim_matches('-').to_owned()
}
