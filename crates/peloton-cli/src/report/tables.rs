//! The text side of `peloton report`: number formatting and the Markdown tables of
//! `summary.md` (one row per run, notes, leaders, a sweep's settings, runs, plots).

use std::fmt::Write as _;

use super::data::{EvalStep, Run, Target};
use super::SweepAxis;

/// A number with four significant digits, scientific when very small or large.
fn num(v: f64) -> String {
    if !v.is_finite() {
        return format!("{v}");
    }
    let a = v.abs();
    if a != 0.0 && !(1e-3..1e5).contains(&a) {
        format!("{v:.3e}")
    } else {
        format!("{v:.4}")
    }
}

fn percent(v: f64) -> String {
    format!("{:.2}%", 100.0 * v)
}

/// A Markdown table cell: no pipes or line breaks.
fn cell(s: &str) -> String {
    s.replace('|', "\\|").replace(['\n', '\r'], " ")
}

/// A unit for byte counts up to `max`: (divisor, name).
pub(super) fn byte_unit(max: f64) -> (f64, &'static str) {
    [(1e9, "GB"), (1e6, "MB"), (1e3, "kB")]
        .into_iter()
        .find(|(d, _)| max >= *d)
        .unwrap_or((1.0, "bytes"))
}

fn format_bytes(b: f64) -> String {
    let (d, unit) = byte_unit(b);
    if d == 1.0 {
        format!("{b:.0} bytes")
    } else {
        format!("{:.2} {unit}", b / d)
    }
}

/// The Markdown summary of a report: a table with one row per run, notes on its columns,
/// the leaders, a sweep's setting, the runs' folders and the plots written.
pub(super) fn summary_md(
    runs: &[Run],
    accuracy_target: Option<(f64, bool)>,
    loss_target: Option<(f64, bool)>,
    plots: &[(&'static str, String)],
    sweep: Option<&SweepAxis>,
) -> String {
    let mut md = String::from("# peloton report\n\n");
    run_table(&mut md, runs, accuracy_target, loss_target);
    notes(&mut md, accuracy_target, loss_target);
    leaders(&mut md, runs);
    if let Some(axis) = sweep {
        sweep_table(&mut md, runs, axis);
    }
    run_list(&mut md, runs);
    plot_list(&mut md, plots);
    md
}

/// An empty table cell.
fn dash() -> String {
    "—".to_string()
}

/// The table of runs: one row per run.
fn run_table(
    md: &mut String,
    runs: &[Run],
    accuracy_target: Option<(f64, bool)>,
    loss_target: Option<(f64, bool)>,
) {
    *md += "| Run | Algorithm | Task | Transport | Workers | Steps | Final test error | Best worker, final | Final ‖∇f‖ | Final accuracy | Best accuracy | Time to target (s) | Sent per worker | Time (s) | Status |\n";
    *md += "|---|---|---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|---|\n";
    for r in runs {
        let last = r.main_evals().and_then(|e| e.values().next_back());
        let target = if r.has_accuracy() {
            accuracy_target.map(|(t, _)| Target::Accuracy(t))
        } else {
            loss_target.map(|(t, _)| Target::Loss(t))
        };
        let time_to = match target {
            Some(t) if r.main_evals().is_some() => {
                r.time_to(t).map_or_else(|| "not reached".into(), num)
            }
            _ => dash(),
        };
        let row = [
            cell(&r.label),
            cell(&r.algorithm),
            cell(&r.task),
            cell(&r.transport),
            r.workers.map_or_else(dash, |w| w.to_string()),
            r.steps.map_or_else(dash, |s| s.to_string()),
            last.map_or_else(dash, |s| num(s.error())),
            last.and_then(EvalStep::best_worker)
                .map_or_else(dash, |(w, e, _)| format!("{} (worker {w})", num(e))),
            last.and_then(EvalStep::reported_grad_norm)
                .map_or_else(dash, num),
            last.and_then(EvalStep::accuracy).map_or_else(dash, percent),
            r.best_accuracy().map_or_else(dash, percent),
            time_to,
            r.bytes_per_worker.map_or_else(dash, format_bytes),
            r.seconds.map_or_else(dash, num),
            cell(&r.status),
        ];
        *md += &format!("| {} |\n", row.join(" | "));
    }
}

/// What the table's columns mean, with the targets of "Time to target".
fn notes(md: &mut String, accuracy_target: Option<(f64, bool)>, loss_target: Option<(f64, bool)>) {
    *md += "\n## Notes\n\n";
    *md += "- Final test error: 1 − accuracy of the last evaluation (the test loss for problems \
           without accuracy); for the model \"worker\" (every worker evaluated), the mean over \
           workers.\n";
    if let Some((t, given)) = accuracy_target {
        let why = if given {
            "set with --target-accuracy"
        } else {
            "the default: the best accuracy every run reaches, i.e. the lowest of the runs' \
             best accuracies; set another with --target-accuracy"
        };
        let _ = writeln!(
            md,
            "- Time to target: time of the first evaluation with test accuracy ≥ {} ({why}).",
            percent(t)
        );
    }
    if let Some((t, given)) = loss_target {
        let why = if given {
            "set with --target-loss"
        } else {
            "the default: the best test loss every such run reaches; set another with \
             --target-loss"
        };
        let _ = writeln!(
            md,
            "- Time to target, runs without accuracy: time of the first evaluation with test \
             loss ≤ {} ({why}).",
            num(t)
        );
    }
    *md += "- Best worker, final: with every worker evaluated (model \"worker\"), the lowest \
           final test error (or objective) and its worker. Final ‖∇f‖: the norm of the full \
           gradient of the original objective at the evaluated model (the best worker's when \
           every worker is evaluated), where the problem computes it: a stationarity check.\n";
    *md += "- Times are in each run's own clock: simulated seconds for `sim` runs, wall-clock \
           seconds for `threads` runs.\n";
    *md += "- Sent per worker: the algorithm's bytes sent (diagnostics excluded) over the whole \
           run, mean over workers.\n";
}

/// How often each worker was leader, for runs that elected leaders.
fn leaders(md: &mut String, runs: &[Run]) {
    let leading: Vec<&Run> = runs
        .iter()
        .filter(|r| !r.leader_counts().is_empty())
        .collect();
    if !leading.is_empty() {
        *md += "\n## Leaders\n\nShare of log points at which each worker was leader.\n\n";
        for r in leading {
            let counts = r.leader_counts();
            let total: usize = counts.values().sum();
            let shares: Vec<String> = counts
                .iter()
                .map(|(w, c)| format!("{w}: {:.0}%", 100.0 * *c as f64 / total as f64))
                .collect();
            let changes = r
                .worker_steps
                .values()
                .filter_map(|s| s.leaders.iter().next().copied())
                .collect::<Vec<_>>()
                .windows(2)
                .filter(|w| w[0] != w[1])
                .count();
            let _ = writeln!(
                md,
                "- **{}**: {} ({} leader changes over {} log points)",
                cell(&r.label),
                shares.join(", "),
                changes,
                total
            );
        }
    }
}

/// The final metrics of a sweep's runs against its setting.
fn sweep_table(md: &mut String, runs: &[Run], axis: &SweepAxis) {
    let _ = writeln!(
        md,
        "\n## Against {}\n\n| Series | {} | Final test error | Time (s) | Time per epoch (s) |\n|---|--:|--:|--:|--:|",
        cell(&axis.name),
        cell(&axis.name)
    );
    for (i, r) in runs.iter().enumerate() {
        let last = r.main_evals().and_then(|e| e.values().next_back());
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} | {} |",
            cell(axis.series.get(i).map_or("", String::as_str)),
            axis.values
                .get(i)
                .copied()
                .flatten()
                .map_or_else(|| "—".into(), num),
            last.map_or_else(dash, |s| num(s.error())),
            r.seconds.map_or_else(dash, num),
            r.seconds
                .zip(r.epochs)
                .map_or_else(dash, |(t, e)| num(t / e)),
        );
    }
}

/// Each run's folder, clock and evaluated models.
fn run_list(md: &mut String, runs: &[Run]) {
    *md += "\n## Runs\n\n";
    for r in runs {
        let models: Vec<&str> = r.evals.iter().map(|(m, _)| m.as_str()).collect();
        let _ = writeln!(
            md,
            "- **{}**: `{}` — {} time; evaluated model: {}",
            r.label.replace(['\n', '\r'], " "),
            r.path.display(),
            if r.simulated {
                "simulated"
            } else {
                "wall-clock"
            },
            if models.is_empty() {
                "none (no evaluations)".into()
            } else {
                models.join(", ")
            }
        );
    }
}

/// The plots written, with what each shows.
fn plot_list(md: &mut String, plots: &[(&'static str, String)]) {
    *md += "\n## Plots\n\n";
    if plots.is_empty() {
        *md += "No plots: the runs have no records.\n";
    }
    for (file, what) in plots {
        let _ = writeln!(md, "- [{file}]({file}): {what}");
    }
}
