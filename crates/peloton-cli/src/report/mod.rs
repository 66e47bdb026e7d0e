//! `peloton report`: read run folders written by `peloton train` and compare them — SVG plots
//! that overlay every run (test error, training loss, traffic, consensus, leaders) and a
//! Markdown summary with one row per run.
//!
//! Only `metrics.jsonl` is required; `config.toml` gives the algorithm, the worker count and
//! the clock (`[transport] kind = "sim"`: simulated time, else wall-clock time), and
//! `summary.json`, when the run finished, gives the final step, time and traffic.
//!
//! Aggregation: several records of one step (one per worker) become one point. Worker
//! records give the mean loss and the mean bytes sent over workers, the largest consensus
//! distance and every leader reported at that step; evaluations of the model "worker" (one
//! per worker) give the mean test loss and accuracy over workers. A point's time is the
//! latest time among its records: the moment every worker had reached the step.
//!
//! The plots are SVG only: plotters' bitmap backend needs a font to draw text, which would
//! have to be a system font (fontconfig) or a TTF embedded in the binary.
//!
//! This file holds the entry points the rest of the CLI calls ([`ReportArgs`], [`SweepAxis`],
//! [`report`]); `data` reads run folders, `tables` writes summary.md and `plots` the plots.

use crate::outln;
use std::path::PathBuf;

use anyhow::{ensure, Context, Result};

mod data;
mod plots;
mod tables;

use data::Run;
use plots::plots;
use tables::summary_md;

/// Arguments of `peloton report`.
#[derive(clap::Args)]
pub struct ReportArgs {
    /// Run folders written by `peloton train` (each with a metrics.jsonl).
    #[arg(value_name = "RUN_DIR")]
    runs: Vec<PathBuf>,
    /// Output folder (default: `report` next to the first run folder); existing plots and
    /// summary.md in it are replaced.
    #[arg(short, long, value_name = "DIR")]
    out: Option<PathBuf>,
    /// Legend name of each run, in order (repeatable; default: the folder's name).
    #[arg(long = "label", value_name = "NAME")]
    labels: Vec<String>,
    /// Test accuracy whose first time is reported (a fraction in [0, 1]; default: the best
    /// accuracy every run reaches, i.e. the lowest of the runs' best accuracies).
    #[arg(long, value_name = "FRACTION")]
    target_accuracy: Option<f64>,
    /// Test loss whose first time is reported, for runs without accuracy (analytic
    /// problems; default: the best loss every such run reaches).
    #[arg(long, value_name = "LOSS")]
    target_loss: Option<f64>,
    /// A sweep's numeric setting, for plots of final metrics against it (`peloton run`).
    #[arg(skip)]
    pub sweep: Option<SweepAxis>,
}

/// A setting that varies over a sweep's runs: each run's value (None: a run without it,
/// drawn as a horizontal reference line) and the series it belongs to.
#[derive(Clone, Debug)]
pub struct SweepAxis {
    pub name: String,
    pub values: Vec<Option<f64>>,
    pub series: Vec<String>,
}

impl ReportArgs {
    /// A report of `runs` with their legend `labels`, written to `out`.
    pub fn new(runs: Vec<PathBuf>, labels: Vec<String>, out: PathBuf) -> Self {
        Self {
            runs,
            out: Some(out),
            labels,
            target_accuracy: None,
            target_loss: None,
            sweep: None,
        }
    }
}

/// Runs `peloton report`.
pub fn report(args: &ReportArgs) -> Result<()> {
    check_args(args)?;
    let runs = load_runs(args)?;
    let out = match &args.out {
        Some(o) => o.clone(),
        None => {
            let first = std::fs::canonicalize(&args.runs[0])?;
            first.parent().unwrap_or(&first).join("report")
        }
    };
    std::fs::create_dir_all(&out)
        .with_context(|| format!("cannot create report folder {}", out.display()))?;

    let (accuracy_target, loss_target) = targets(args, &runs);

    if let Some(axis) = &args.sweep {
        ensure!(
            axis.values.len() == runs.len() && axis.series.len() == runs.len(),
            "the sweep axis needs one value per run"
        );
    }
    let written = plots(&runs, &out, args.sweep.as_ref())?;
    let summary = out.join("summary.md");
    crate::run_folder::write_atomic(
        &summary,
        summary_md(
            &runs,
            accuracy_target,
            loss_target,
            &written,
            args.sweep.as_ref(),
        )
        .as_bytes(),
    )?;
    outln!(
        "wrote {} and {} plots to {}",
        summary.display(),
        written.len(),
        out.display()
    );
    Ok(())
}

/// Refuses a report without runs, with more labels than runs, or with a target out of range.
fn check_args(args: &ReportArgs) -> Result<()> {
    ensure!(
        !args.runs.is_empty(),
        "no run folders given: peloton report RUN_DIR... [--out DIR] [--label NAME]..."
    );
    ensure!(
        args.labels.len() <= args.runs.len(),
        "{} --label values for {} run folders",
        args.labels.len(),
        args.runs.len()
    );
    if let Some(t) = args.target_accuracy {
        ensure!(
            (0.0..=1.0).contains(&t),
            "--target-accuracy must be a fraction in [0, 1], got {t}"
        );
    }
    if let Some(t) = args.target_loss {
        ensure!(t.is_finite(), "--target-loss must be a finite number");
    }
    Ok(())
}

/// Loads every run folder, labeled with its `--label` or its folder's name.
fn load_runs(args: &ReportArgs) -> Result<Vec<Run>> {
    let mut runs = Vec::new();
    for (i, path) in args.runs.iter().enumerate() {
        ensure!(
            path.exists(),
            "run folder {} does not exist",
            path.display()
        );
        let full = std::fs::canonicalize(path)
            .with_context(|| format!("cannot open run folder {}", path.display()))?;
        let label = match args.labels.get(i) {
            Some(l) => l.clone(),
            None => full
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_else(|| full.display().to_string()),
        };
        runs.push(Run::load(path, label)?);
    }
    Ok(runs)
}

/// The targets of "Time to target", each with whether it was given: `--target-accuracy` or
/// the lowest of the best accuracies of the runs with accuracy, `--target-loss` or the highest
/// of the best losses of the evaluated runs without accuracy.
fn targets(args: &ReportArgs, runs: &[Run]) -> (ChosenTarget, ChosenTarget) {
    let accuracy_target = match args.target_accuracy {
        Some(t) => Some((t, true)),
        None => runs
            .iter()
            .filter(|r| r.has_accuracy())
            .filter_map(Run::best_accuracy)
            .reduce(f64::min)
            .map(|t| (t, false)),
    };
    let loss_target = match args.target_loss {
        Some(t) => Some((t, true)),
        None => runs
            .iter()
            .filter(|r| !r.has_accuracy() && r.main_evals().is_some())
            .filter_map(Run::best_loss)
            .reduce(f64::max)
            .map(|t| (t, false)),
    };
    (accuracy_target, loss_target)
}

/// A target of "Time to target" (`None`: none applies), with whether it was given on the
/// command line.
type ChosenTarget = Option<(f64, bool)>;
