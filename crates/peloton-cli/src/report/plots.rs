//! The plots of `peloton report`: every overlay plot (one series per run), the leader counts,
//! the trajectories and a sweep's final metrics, drawn as SVG and rendered to PNG beside it.

use std::collections::BTreeSet;
use std::path::Path;

use anyhow::{Context, Result};
use plotters::coord::types::RangedCoordf64;
use plotters::prelude::*;

use super::data::{EvalStep, Run, WorkerStep};
use super::tables::byte_unit;
use super::SweepAxis;

const COLORS: [RGBColor; 10] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
    RGBColor(188, 189, 34),
    RGBColor(23, 190, 207),
];

#[derive(Clone, Copy, PartialEq)]
enum Mark {
    /// A line with a dot at each point (sparse data such as evaluations).
    LineDots,
    Line,
    Points,
}

struct Series {
    label: String,
    color: RGBColor,
    points: Vec<(f64, f64)>,
}

struct Plot {
    file: &'static str,
    title: String,
    x_desc: String,
    y_desc: String,
    mark: Mark,
    integer_x: bool,
    integer_y: bool,
    /// The y axis starts at zero (cumulative counts).
    y_from_zero: bool,
    legend: SeriesLabelPosition,
}

/// A range around `lo..hi` with a margin, never empty.
fn padded(lo: f64, hi: f64, from_zero: bool) -> (f64, f64) {
    let lo = if from_zero { lo.min(0.0) } else { lo };
    let span = hi - lo;
    if span > 0.0 && span.is_finite() {
        let pad = 0.05 * span;
        (if from_zero && lo >= 0.0 { lo } else { lo - pad }, hi + pad)
    } else {
        let pad = (hi.abs() * 0.1).max(1.0);
        (if from_zero { lo } else { lo - pad }, hi + pad)
    }
}

fn draw(path: &Path, plot: &Plot, series: &[Series]) -> Result<()> {
    let points = || series.iter().flat_map(|s| s.points.iter());
    let (x_lo, x_hi) = points().fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), p| {
        (a.min(p.0), b.max(p.0))
    });
    let (y_lo, y_hi) = points().fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), p| {
        (a.min(p.1), b.max(p.1))
    });
    let x = padded(x_lo, x_hi, true);
    let y = if plot.integer_y {
        (y_lo - 0.5, y_hi + 0.5)
    } else {
        padded(y_lo, y_hi, plot.y_from_zero)
    };
    let fail = || format!("cannot draw {}", path.display());
    let legend = plot.legend.clone();
    draw_chart(path, &plot.title, (x, y), legend, |chart| {
        let integer = integer_label;
        let mut mesh = chart.configure_mesh();
        mesh.x_desc(plot.x_desc.as_str())
            .y_desc(plot.y_desc.as_str())
            .axis_desc_style(("sans-serif", 17))
            .label_style(("sans-serif", 14))
            .light_line_style(WHITE.mix(0.0));
        if plot.integer_x {
            mesh.x_label_formatter(&integer);
        }
        if plot.integer_y {
            let span = (y.1 - y.0).round() as usize;
            mesh.y_label_formatter(&integer).y_labels(span + 1);
        }
        mesh.draw().with_context(fail)?;
        for s in series {
            let color = s.color;
            let anno = match plot.mark {
                Mark::Line | Mark::LineDots => chart
                    .draw_series(
                        LineSeries::new(s.points.iter().copied(), color.filled().stroke_width(2))
                            .point_size(if plot.mark == Mark::LineDots { 3 } else { 0 }),
                    )
                    .with_context(fail)?,
                Mark::Points => chart
                    .draw_series(
                        s.points
                            .iter()
                            .map(|&p| Circle::new(p, 3, color.mix(0.8).filled())),
                    )
                    .with_context(fail)?,
            };
            if s.label.is_empty() {
                // One legend entry per run when a run draws several lines (one per worker).
                continue;
            }
            let anno = anno.label(s.label.as_str());
            if plot.mark == Mark::Points {
                anno.legend(move |(x, y)| Circle::new((x + 10, y), 4, color.filled()));
            } else {
                anno.legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(3))
                });
            }
        }
        Ok(())
    })
}

/// Every worker's path through (x₀, x₁), one color per run: a hollow circle at the first
/// record, a filled one at the last. The double-well's minima (±1, 0) and saddle (0, 0) are
/// marked when every run is that problem.
fn draw_trajectories(path: &Path, runs: &[Run], double_well: bool) -> Result<()> {
    let points = || runs.iter().flat_map(|r| r.trajectories.values().flatten());
    let finite = |p: &&(f64, f64)| p.0.is_finite() && p.1.is_finite();
    let (mut x_lo, mut x_hi, mut y_lo, mut y_hi) = points().filter(finite).fold(
        (
            f64::INFINITY,
            f64::NEG_INFINITY,
            f64::INFINITY,
            f64::NEG_INFINITY,
        ),
        |(a, b, c, d), p| (a.min(p.0), b.max(p.0), c.min(p.1), d.max(p.1)),
    );
    if double_well {
        (x_lo, x_hi, y_lo, y_hi) = (x_lo.min(-1.0), x_hi.max(1.0), y_lo.min(0.0), y_hi.max(0.0));
    }
    let x = padded(x_lo, x_hi, false);
    let y = padded(y_lo, y_hi, false);
    let fail = || format!("cannot draw {}", path.display());
    let title = "Trajectories of every worker (x₀, x₁)";
    draw_chart(
        path,
        title,
        (x, y),
        SeriesLabelPosition::UpperRight,
        |chart| {
            chart
                .configure_mesh()
                .x_desc("x₀")
                .y_desc("x₁")
                .axis_desc_style(("sans-serif", 17))
                .label_style(("sans-serif", 14))
                .light_line_style(WHITE.mix(0.0))
                .draw()
                .with_context(fail)?;
            if double_well {
                draw_double_well_marks(chart, path)?;
            }
            for (i, r) in runs.iter().enumerate() {
                let color = COLORS[i % COLORS.len()];
                for (k, t) in r.trajectories.values().enumerate() {
                    let t: Vec<(f64, f64)> = t.iter().copied().filter(|p| finite(&p)).collect();
                    let (Some(&first), Some(&last)) = (t.first(), t.last()) else {
                        continue;
                    };
                    let line = chart
                        .draw_series(LineSeries::new(t, color.mix(0.8).stroke_width(2)))
                        .with_context(fail)?;
                    if k == 0 {
                        line.label(r.label.as_str()).legend(move |(x, y)| {
                            PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(3))
                        });
                    }
                    chart
                        .draw_series([
                            Circle::new(first, 5, color.stroke_width(2)),
                            Circle::new(last, 5, color.filled()),
                        ])
                        .with_context(fail)?;
                }
            }
            Ok(())
        },
    )
}

/// The double-well's minima (±1, 0), crosses, and its saddle (0, 0), a triangle, each with
/// a legend entry.
fn draw_double_well_marks(chart: &mut Chart<'_, '_>, path: &Path) -> Result<()> {
    let fail = || format!("cannot draw {}", path.display());
    let marks = [(-1.0, 0.0), (1.0, 0.0)];
    chart
        .draw_series(
            marks
                .iter()
                .map(|&p| Cross::new(p, 8, BLACK.stroke_width(2))),
        )
        .with_context(fail)?
        .label("minima (±1, 0)")
        .legend(|(x, y)| Cross::new((x + 10, y), 6, BLACK.stroke_width(2)));
    chart
        .draw_series(std::iter::once(TriangleMarker::new(
            (0.0, 0.0),
            8,
            BLACK.filled(),
        )))
        .with_context(fail)?
        .label("saddle (0, 0)")
        .legend(|(x, y)| TriangleMarker::new((x + 10, y), 6, BLACK.filled()));
    Ok(())
}

/// The chart every plot of a report draws on: a 960×600 SVG with the title, axes over the
/// ranges `x` × `y`, and the legend at `legend`. `draw` adds the mesh and the series.
fn draw_chart(
    path: &Path,
    title: &str,
    (x, y): ((f64, f64), (f64, f64)),
    legend: SeriesLabelPosition,
    draw: impl FnOnce(&mut Chart<'_, '_>) -> Result<()>,
) -> Result<()> {
    let fail = || format!("cannot draw {}", path.display());
    let root = SVGBackend::new(path, (960, 600)).into_drawing_area();
    root.fill(&WHITE).with_context(fail)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 24))
        .margin(16)
        .x_label_area_size(50)
        .y_label_area_size(80)
        .build_cartesian_2d(x.0..x.1, y.0..y.1)
        .with_context(fail)?;
    draw(&mut chart)?;
    chart
        .configure_series_labels()
        .position(legend)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK.mix(0.4))
        .label_font(("sans-serif", 17))
        .draw()
        .with_context(fail)?;
    root.present().with_context(fail)?;
    drop(chart);
    drop(root);
    write_png(path)
}

/// Renders the SVG plot at `path` to a PNG beside it (same name, `.png`), with the system's
/// fonts: plotters' own bitmap backend would need fontconfig or an embedded font to draw text.
fn write_png(svg: &Path) -> Result<()> {
    use resvg::{tiny_skia, usvg};
    static OPTIONS: std::sync::OnceLock<usvg::Options<'static>> = std::sync::OnceLock::new();
    let options = OPTIONS.get_or_init(|| {
        let mut options = usvg::Options::default();
        let fonts = options.fontdb_mut();
        fonts.load_system_fonts();
        // Plotters writes font-family "sans-serif"; point it at a sans face this machine has
        // (fontdb's default, Arial, is rarely installed on Linux).
        let has = |name: &str| {
            fonts
                .faces()
                .any(|f| f.families.iter().any(|(family, _)| family == name))
        };
        if let Some(name) = ["DejaVu Sans", "Liberation Sans", "Noto Sans", "Arial"]
            .into_iter()
            .find(|n| has(n))
        {
            fonts.set_sans_serif_family(name);
        }
        options
    });
    let png = svg.with_extension("png");
    let fail = || format!("cannot render {}", png.display());
    let data = std::fs::read(svg).with_context(fail)?;
    let tree = usvg::Tree::from_data(&data, options).with_context(fail)?;
    let size = tree.size().to_int_size();
    let mut pixmap = tiny_skia::Pixmap::new(size.width(), size.height())
        .ok_or_else(|| anyhow::anyhow!("cannot render {}: empty image", png.display()))?;
    resvg::render(&tree, tiny_skia::Transform::default(), &mut pixmap.as_mut());
    let bytes = pixmap.encode_png().with_context(fail)?;
    crate::run_folder::write_atomic(&png, &bytes)
}

/// A plot's drawing context.
type Chart<'a, 'b> = ChartContext<'a, SVGBackend<'b>, Cartesian2d<RangedCoordf64, RangedCoordf64>>;

/// Tick labels at whole numbers only (worker indices, counts).
fn integer_label(v: &f64) -> String {
    if (v - v.round()).abs() < 1e-9 {
        format!("{v:.0}")
    } else {
        String::new()
    }
}

/// How often each worker was leader: one bar per (run, worker), the share of log points.
fn draw_leader_counts(path: &Path, runs: &[(usize, &Run)]) -> Result<()> {
    let workers = runs
        .iter()
        .filter_map(|(_, r)| r.leader_counts().keys().next_back().copied())
        .max()
        .unwrap_or(0)
        + 1;
    let fail = || format!("cannot draw {}", path.display());
    let title = "How often each worker was leader";
    let x = (-0.5, workers as f64 - 0.5);
    draw_chart(
        path,
        title,
        (x, (0.0, 1.05)),
        SeriesLabelPosition::UpperRight,
        |chart| {
            let integer = integer_label;
            chart
                .configure_mesh()
                .x_desc("worker")
                .y_desc("share of log points as leader")
                .x_label_formatter(&integer)
                .x_labels(workers.min(32) + 1)
                .axis_desc_style(("sans-serif", 17))
                .label_style(("sans-serif", 14))
                .light_line_style(WHITE.mix(0.0))
                .draw()
                .with_context(fail)?;
            let width = 0.8 / runs.len().max(1) as f64;
            for (k, &(i, r)) in runs.iter().enumerate() {
                let color = COLORS[i % COLORS.len()];
                let counts = r.leader_counts();
                let total: usize = counts.values().sum();
                let left = -0.4 + k as f64 * width;
                chart
                    .draw_series(counts.iter().map(|(&w, &c)| {
                        let x0 = w as f64 + left;
                        Rectangle::new(
                            [(x0, 0.0), (x0 + width, c as f64 / total.max(1) as f64)],
                            color.filled(),
                        )
                    }))
                    .with_context(fail)?
                    .label(r.label.as_str())
                    .legend(move |(x, y)| {
                        Rectangle::new([(x, y - 5), (x + 14, y + 5)], color.filled())
                    });
            }
            Ok(())
        },
    )
}

/// Objectives that fall over more than three decades (exact-gradient problems converging
/// linearly) are unreadable on a linear axis: plot log₁₀ of them instead. Only plots whose
/// file name says "worker" (per-worker and best-worker objectives) are eligible.
fn log_scale_if_wide(mut plot: Plot, series: Vec<Series>) -> (Plot, Vec<Series>) {
    let values = || series.iter().flat_map(|s| s.points.iter().map(|p| p.1));
    let positive = values().all(|v| v > 0.0);
    let (lo, hi) = values().fold((f64::INFINITY, 0.0f64), |(a, b), v| (a.min(v), b.max(v)));
    if !plot.file.contains("worker") || !positive || hi < 1e3 * lo {
        return (plot, series);
    }
    plot.y_desc = format!("log₁₀ {}", plot.y_desc);
    let series = series
        .into_iter()
        .map(|mut s| {
            s.points.iter_mut().for_each(|p| p.1 = p.1.log10());
            s
        })
        .collect();
    (plot, series)
}

/// Keeps the finite points; drops series left empty.
fn finite(series: Vec<Series>) -> Vec<Series> {
    series
        .into_iter()
        .map(|mut s| {
            s.points.retain(|p| p.0.is_finite() && p.1.is_finite());
            s
        })
        .filter(|s| !s.points.is_empty())
        .collect()
}

/// Draws every plot that has data; returns the files written with a description.
pub(super) fn plots(
    runs: &[Run],
    out: &Path,
    sweep: Option<&SweepAxis>,
) -> Result<Vec<(&'static str, String)>> {
    let time_desc = time_desc(runs);
    let error_desc = error_desc(runs);
    let mut written = Vec::new();
    // Plots drawn by their own functions, listed after the overlaid ones.
    let mut extra: Vec<(&'static str, String)> = Vec::new();
    let mut emit = |plot: Plot, series: Vec<Series>, what: &str| -> Result<()> {
        let (plot, series) = log_scale_if_wide(plot, finite(series));
        if !series.is_empty() {
            draw(&out.join(plot.file), &plot, &series)?;
            written.push((plot.file, what.to_string()));
        }
        Ok(())
    };
    eval_plots(runs, time_desc, error_desc, &mut emit)?;
    worker_plots(runs, time_desc, &mut emit)?;
    leader_plots(runs, out, &mut emit, &mut extra)?;
    // Runs evaluated per worker: each worker's objective, and the best worker's.
    if runs.iter().any(evaluated_per_worker) {
        per_worker_plots(runs, time_desc, error_desc, &mut emit)?;
    }

    if runs.iter().any(|r| !r.trajectories.is_empty()) {
        let double_well = runs.iter().all(|r| r.task == "double-well");
        draw_trajectories(&out.join("trajectories.svg"), runs, double_well)?;
        extra.push((
            "trajectories.svg",
            "every worker's trajectory in the first two coordinates (hollow: start, filled: end)"
                .into(),
        ));
    }

    if let Some(axis) = sweep {
        sweep_plots(runs, axis, error_desc, &mut emit)?;
    }
    written.extend(extra);
    Ok(written)
}

/// Draws one overlay plot and lists it.
type Emit<'a> = dyn FnMut(Plot, Vec<Series>, &str) -> Result<()> + 'a;

/// The color of the `i`-th run.
fn color(i: usize) -> RGBColor {
    COLORS[i % COLORS.len()]
}

/// The time axis's description: the runs' clock.
fn time_desc(runs: &[Run]) -> &'static str {
    if runs.iter().all(|r| r.simulated) {
        "simulated time (s)"
    } else if runs.iter().all(|r| !r.simulated) {
        "wall-clock time (s)"
    } else {
        "time (s, simulated or wall-clock per run)"
    }
}

/// The evaluations' axis description: test error where every evaluated run has accuracy,
/// test loss where none has.
fn error_desc(runs: &[Run]) -> &'static str {
    let with_acc = runs.iter().filter(|r| r.has_accuracy()).count();
    let with_evals = runs.iter().filter(|r| r.main_evals().is_some()).count();
    if with_acc == with_evals {
        "test error (1 − accuracy)"
    } else if with_acc == 0 {
        "test loss"
    } else {
        "test error (1 − accuracy, or test loss without accuracy)"
    }
}

/// An overlay plot with the legend at the upper right, a y axis over the data, not integer.
fn plot(
    file: &'static str,
    title: &str,
    x_desc: &str,
    y_desc: &str,
    mark: Mark,
    integer_x: bool,
) -> Plot {
    Plot {
        file,
        title: title.into(),
        x_desc: x_desc.into(),
        y_desc: y_desc.into(),
        mark,
        integer_x,
        integer_y: false,
        y_from_zero: false,
        legend: SeriesLabelPosition::UpperRight,
    }
}

/// Test error against time and against steps.
fn eval_plots(runs: &[Run], time_desc: &str, error_desc: &str, emit: &mut Emit<'_>) -> Result<()> {
    emit(
        plot(
            "test_error_vs_time.svg",
            "Test error against time",
            time_desc,
            error_desc,
            Mark::LineDots,
            false,
        ),
        eval_series(runs, &|_, _, s| Some(s.seconds)),
        "test error against time",
    )?;
    emit(
        plot(
            "test_error_vs_steps.svg",
            "Test error against steps",
            "step",
            error_desc,
            Mark::LineDots,
            true,
        ),
        eval_series(runs, &|_, step, _| Some(step as f64)),
        "test error against steps",
    )?;
    // Against what each run had sent by then (its workers' mean; evaluations at steps without
    // worker records are left out): where compression or a sparser algorithm pays off.
    let (divisor, unit) = byte_unit(most_bytes_per_worker(runs));
    let bytes = eval_series(runs, &|run, step, _| {
        let w = run.worker_steps.get(&step)?;
        Some(w.bytes_sum / w.records as f64 / divisor)
    });
    emit(
        plot(
            "test_error_vs_bytes.svg",
            "Test error against bytes sent per worker (mean)",
            &format!("sent per worker ({unit})"),
            error_desc,
            Mark::LineDots,
            false,
        ),
        bytes,
        "test error against bytes sent per worker",
    )
}

/// Every run's evaluations (one series per evaluated model), against `x` of the run, the step
/// and the evaluation (points where `x` has no value are left out).
fn eval_series(runs: &[Run], x: &dyn Fn(&Run, u64, &EvalStep) -> Option<f64>) -> Vec<Series> {
    runs.iter()
        .enumerate()
        .flat_map(|(i, r)| {
            r.eval_series().map(move |(label, steps)| Series {
                label,
                color: color(i),
                points: steps
                    .iter()
                    .filter_map(|(&step, s)| Some((x(r, step, s)?, s.error())))
                    .collect(),
            })
        })
        .collect()
}

/// Training loss and traffic against time, consensus distance against steps.
fn worker_plots(runs: &[Run], time_desc: &str, emit: &mut Emit<'_>) -> Result<()> {
    emit(
        plot(
            "train_loss_vs_time.svg",
            "Training loss (mean over workers) against time",
            time_desc,
            "training loss",
            Mark::Line,
            false,
        ),
        worker_series(runs, &|s| Some(s.loss_sum / s.records as f64), true),
        "training loss, mean over workers, against time",
    )?;

    let (divisor, unit) = byte_unit(most_bytes_per_worker(runs));
    emit(
        Plot {
            legend: SeriesLabelPosition::UpperLeft,
            y_from_zero: true,
            ..plot(
                "bytes_vs_time.svg",
                "Traffic: bytes sent per worker (mean) against time",
                time_desc,
                &format!("sent per worker ({unit})"),
                Mark::Line,
                false,
            )
        },
        worker_series(
            runs,
            &|s| Some(s.bytes_sum / s.records as f64 / divisor),
            true,
        ),
        "bytes sent per worker, mean over workers, against time",
    )?;
    emit(
        plot(
            "consensus_vs_steps.svg",
            "Consensus: largest distance of a worker to the average model",
            "step",
            "max over workers of ‖x_i − x̄‖",
            Mark::Line,
            true,
        ),
        worker_series(runs, &|s| s.consensus, false),
        "consensus distance, max over workers, against steps",
    )
}

/// The most bytes sent per worker (the mean over a step's records) of any run at any step.
fn most_bytes_per_worker(runs: &[Run]) -> f64 {
    runs.iter()
        .flat_map(|r| r.worker_steps.values())
        .map(|s| s.bytes_sum / s.records as f64)
        .filter(|b| b.is_finite())
        .fold(0.0, f64::max)
}

/// `f` of every run's worker records (where it has a value), against time or steps.
fn worker_series(
    runs: &[Run],
    f: &dyn Fn(&WorkerStep) -> Option<f64>,
    by_time: bool,
) -> Vec<Series> {
    runs.iter()
        .enumerate()
        .map(|(i, r)| Series {
            label: r.label.clone(),
            color: color(i),
            points: r
                .worker_steps
                .iter()
                .filter_map(|(&step, s)| {
                    f(s).map(|v| (if by_time { s.seconds } else { step as f64 }, v))
                })
                .collect(),
        })
        .collect()
}

/// The leader against steps (overlaid), and how often each worker was leader (its own
/// plot, listed in `extra`).
fn leader_plots(
    runs: &[Run],
    out: &Path,
    emit: &mut Emit<'_>,
    extra: &mut Vec<(&'static str, String)>,
) -> Result<()> {
    emit(
        Plot {
            integer_y: true,
            ..plot(
                "leader_vs_steps.svg",
                "Leader over steps",
                "step",
                "leader (worker)",
                Mark::Points,
                true,
            )
        },
        leader_series(runs),
        "leader identity against steps (each run's points slightly offset vertically)",
    )?;

    // Leader counts: runs that elected leaders.
    let leading: Vec<(usize, &Run)> = runs
        .iter()
        .enumerate()
        .filter(|(_, r)| !r.leader_counts().is_empty())
        .collect();
    if !leading.is_empty() {
        draw_leader_counts(&out.join("leader_counts.svg"), &leading)?;
        extra.push((
            "leader_counts.svg",
            "share of log points at which each worker was leader".into(),
        ));
    }
    Ok(())
}

/// Every leader reported at every step, one series per run.
fn leader_series(runs: &[Run]) -> Vec<Series> {
    runs.iter()
        .enumerate()
        .map(|(i, r)| {
            // Runs are offset vertically a little so that equal leaders stay visible.
            let n = runs.len() as f64;
            let dodge = (i as f64 - (n - 1.0) / 2.0) * (0.6 / n).min(0.12);
            Series {
                label: r.label.clone(),
                color: color(i),
                points: r
                    .worker_steps
                    .iter()
                    .flat_map(|(&step, s)| {
                        s.leaders
                            .iter()
                            .map(move |&l| (step as f64, l as f64 + dodge))
                    })
                    .collect(),
            }
        })
        .collect()
}

/// Whether the run evaluated every worker (model "worker").
fn evaluated_per_worker(r: &Run) -> bool {
    r.main_evals()
        .is_some_and(|e| e.values().any(|s| !s.per_worker.is_empty()))
}

/// Each worker's evaluation against steps, and the best worker's against steps and time, for
/// the runs evaluated per worker.
fn per_worker_plots(
    runs: &[Run],
    time_desc: &str,
    error_desc: &str,
    emit: &mut Emit<'_>,
) -> Result<()> {
    emit(
        plot(
            "worker_error_vs_steps.svg",
            "Every worker's evaluation against steps (one line per worker)",
            "step",
            error_desc,
            Mark::Line,
            true,
        ),
        worker_error_series(runs),
        "each worker's test error (or objective) against steps, one color per run",
    )?;
    emit(
        plot(
            "best_worker_vs_steps.svg",
            "The best worker's evaluation against steps",
            "step",
            error_desc,
            Mark::LineDots,
            true,
        ),
        best_worker_series(runs, false),
        "the best worker's test error (or objective) against steps",
    )?;
    emit(
        plot(
            "best_worker_vs_time.svg",
            "The best worker's evaluation against time",
            time_desc,
            error_desc,
            Mark::LineDots,
            false,
        ),
        best_worker_series(runs, true),
        "the best worker's test error (or objective) against time",
    )
}

/// One series per evaluated worker, labeled once per run.
fn worker_error_series(runs: &[Run]) -> Vec<Series> {
    let mut series = Vec::new();
    for (i, r) in runs
        .iter()
        .enumerate()
        .filter(|(_, r)| evaluated_per_worker(r))
    {
        let evals = r.main_evals().expect("checked");
        let workers: BTreeSet<usize> = evals
            .values()
            .flat_map(|s| s.per_worker.keys().copied())
            .collect();
        for (k, w) in workers.into_iter().enumerate() {
            series.push(Series {
                label: if k == 0 {
                    r.label.clone()
                } else {
                    String::new()
                },
                color: color(i),
                points: evals
                    .iter()
                    .filter_map(|(&step, s)| s.per_worker.get(&w).map(|v| (step as f64, v.0)))
                    .collect(),
            });
        }
    }
    series
}

/// The best worker's evaluation of every run evaluated per worker, against time or steps.
fn best_worker_series(runs: &[Run], by_time: bool) -> Vec<Series> {
    runs.iter()
        .enumerate()
        .filter(|(_, r)| evaluated_per_worker(r))
        .map(|(i, r)| Series {
            label: r.label.clone(),
            color: color(i),
            points: r
                .main_evals()
                .expect("checked")
                .iter()
                .filter_map(|(&step, s)| {
                    s.best_worker()
                        .map(|b| (if by_time { s.seconds } else { step as f64 }, b.1))
                })
                .collect(),
        })
        .collect()
}

/// The final metrics of a sweep's runs against one of its settings: one series per group of
/// runs that differ only in that setting; runs without it are horizontal reference lines.
fn sweep_plots(
    runs: &[Run],
    axis: &SweepAxis,
    error_desc: &str,
    emit: &mut Emit<'_>,
) -> Result<()> {
    let final_error = |r: &Run| {
        r.main_evals()
            .and_then(|e| e.values().next_back())
            .map(EvalStep::error)
    };
    emit(
        sweep_plot(
            axis,
            "sweep_error.svg",
            format!("Final evaluation against {}", axis.name),
            format!("final {error_desc}"),
        ),
        sweep_series(runs, axis, &final_error),
        &format!("final test error (or loss) against {}", axis.name),
    )?;
    let per_epoch = runs.iter().all(|r| r.epochs.is_some());
    emit(
        sweep_plot(
            axis,
            "sweep_time.svg",
            format!(
                "{} against {}",
                if per_epoch {
                    "Time per epoch"
                } else {
                    "Run time"
                },
                axis.name
            ),
            if per_epoch {
                "seconds per epoch (run's clock)".into()
            } else {
                "seconds (run's clock)".into()
            },
        ),
        sweep_series(runs, axis, &|r: &Run| {
            let t = r.seconds?;
            Some(if per_epoch { t / r.epochs? } else { t })
        }),
        &format!(
            "{} against {}",
            if per_epoch {
                "time per epoch"
            } else {
                "run time"
            },
            axis.name
        ),
    )?;
    Ok(())
}

/// A plot of a sweep's final metrics against its setting `axis`.
fn sweep_plot(axis: &SweepAxis, file: &'static str, title: String, y_desc: String) -> Plot {
    Plot {
        file,
        title,
        x_desc: axis.name.clone(),
        y_desc,
        mark: Mark::LineDots,
        integer_x: false,
        integer_y: false,
        y_from_zero: false,
        legend: SeriesLabelPosition::UpperRight,
    }
}

/// `f` of every run of a sweep against its value of the setting, one series per group of
/// runs (in order of first appearance); a run without the setting spans the setting's range.
fn sweep_series(runs: &[Run], axis: &SweepAxis, f: &dyn Fn(&Run) -> Option<f64>) -> Vec<Series> {
    let lo = axis
        .values
        .iter()
        .flatten()
        .copied()
        .fold(f64::INFINITY, f64::min);
    let hi = axis
        .values
        .iter()
        .flatten()
        .copied()
        .fold(f64::NEG_INFINITY, f64::max);
    let mut names: Vec<&str> = Vec::new();
    for s in &axis.series {
        if !names.contains(&s.as_str()) {
            names.push(s);
        }
    }
    names
        .iter()
        .enumerate()
        .map(|(k, name)| {
            let mut points: Vec<(f64, f64)> = Vec::new();
            for (i, r) in runs.iter().enumerate() {
                if axis.series.get(i).map(String::as_str) != Some(*name) {
                    continue;
                }
                if let Some(v) = f(r) {
                    match axis.values.get(i).copied().flatten() {
                        Some(x) => points.push((x, v)),
                        None => points.extend([(lo, v), (hi, v)]),
                    }
                }
            }
            points.sort_by(|a, b| a.0.total_cmp(&b.0));
            Series {
                label: name.to_string(),
                color: COLORS[k % COLORS.len()],
                points,
            }
        })
        .collect()
}
