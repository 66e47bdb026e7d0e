//! `peloton run SWEEP.toml`: one command per experiment. A sweep file names a base experiment
//! and a grid of settings; every combination is trained into its own run folder (runs that
//! already finished are kept, so an interrupted sweep resumes), with a progress line and an
//! ETA per run, then `peloton report` compares them — one report per value of `group_by`.
//!
//! ```toml
//! base = "sim-network/mnist-mlp-16.toml"     # relative to the sweep file
//! out = "runs/sim-network"                   # default: runs/<sweep file name>
//!
//! [grid]                                     # keys: any --set key, or "cluster"
//! cluster = ["sim-network/cluster-1g.toml", "sim-network/cluster-100g.toml"]
//! "algorithm.name" = ["all-reduce", "lsgd", "easgd", "sgp"]
//!
//! [variants.lgd]                             # named settings; every variant × every grid point
//! "algorithm.name" = "lsgd"
//! "algorithm.lambda" = 0.2
//! [variants.matcha]
//! "algorithm.name" = "matcha"
//! grid = { "algorithm.budget" = [0.1, 0.5] } # a grid of this variant only
//!
//! [full]                                     # `peloton run FILE --full`: the long budget
//! steps = 20000
//!
//! [report]
//! group_by = "cluster"                       # default: one report of every run
//! x = "budget"                               # also plot final metrics against this setting
//! ```
//!
//! Settings apply in this order: the base file, the variant, the grid point, `[full]` (with
//! `--full`), then `--set`; keys that switch a kind (`algorithm.name`, `…kind`) go first,
//! because switching drops the old kind's keys.

use crate::outln;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, ensure, Context, Result};
use serde::Deserialize;

use crate::config::{self, Override};
use crate::report::{report, ReportArgs, SweepAxis};
use crate::train::{train, TrainOptions};

/// Arguments of `peloton run`.
#[derive(clap::Args)]
pub struct RunArgs {
    /// The sweep file (TOML).
    #[arg(value_name = "SWEEP")]
    file: PathBuf,
    /// Print the runs without training.
    #[arg(long)]
    dry_run: bool,
    /// Apply the sweep's `[full]` settings (the long budget, e.g. for a GPU machine); the
    /// default output folder becomes runs/<sweep>-full.
    #[arg(long)]
    full: bool,
    /// A setting applied to every run after the sweep's own (repeatable), e.g. `--set steps=50`.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    set: Vec<String>,
    /// Output folder of the runs and reports (default: the sweep's `out`, else runs/<sweep>).
    #[arg(short, long, value_name = "DIR")]
    out: Option<PathBuf>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SweepFile {
    base: PathBuf,
    #[serde(default)]
    out: Option<PathBuf>,
    #[serde(default)]
    description: Option<String>,
    /// Setting → values; BTreeMap keeps a fixed order (keys sorted), so folder names repeat.
    #[serde(default)]
    grid: BTreeMap<String, Vec<toml::Value>>,
    /// Name → settings (and an optional `grid` of its own).
    #[serde(default)]
    variants: BTreeMap<String, toml::Table>,
    #[serde(default)]
    full: toml::Table,
    #[serde(default)]
    report: ReportSection,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ReportSection {
    #[serde(default)]
    group_by: Option<String>,
    #[serde(default)]
    x: Option<String>,
}

/// One combination of the grid.
#[derive(Debug, Clone, Default)]
struct Combination {
    /// (key, value as written) in grid order.
    settings: Vec<(String, String)>,
    label: String,
    /// The variant's name and fixed settings, if the sweep has variants.
    variant: Option<String>,
    fixed: Vec<(String, toml::Value)>,
}

fn value_text(v: &toml::Value) -> String {
    match v {
        toml::Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// A short, file-name-safe name for a value (a path becomes its file stem).
fn short(key: &str, value: &str) -> String {
    let v = if key == "cluster" {
        Path::new(value)
            .file_stem()
            .map(|s| s.to_string_lossy().to_string())
            .unwrap_or_else(|| value.to_string())
    } else {
        value.to_string()
    };
    safe(&v)
}

fn safe(v: &str) -> String {
    v.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

fn join_label(a: &str, b: &str) -> String {
    match (a.is_empty(), b.is_empty()) {
        (true, _) => b.to_string(),
        (_, true) => a.to_string(),
        _ => format!("{a}-{b}"),
    }
}

/// Expands `grid` on top of each of `seeds`.
fn expand(
    seeds: Vec<Combination>,
    grid: &BTreeMap<String, Vec<toml::Value>>,
    what: &str,
) -> Result<Vec<Combination>> {
    let mut out = seeds;
    for (key, values) in grid {
        ensure!(!values.is_empty(), "{what}.{key} has no values");
        out = out
            .into_iter()
            .flat_map(|c| {
                values.iter().map(move |v| {
                    let mut next = c.clone();
                    let text = value_text(v);
                    next.label = join_label(&next.label, &short(key, &text));
                    next.settings.push((key.clone(), text));
                    next
                })
            })
            .collect();
    }
    Ok(out)
}

fn combinations(grid: &BTreeMap<String, Vec<toml::Value>>) -> Result<Vec<Combination>> {
    expand(vec![Combination::default()], grid, "grid")
}

/// Dotted keys of a settings table: nested tables are flattened, other values kept.
fn flatten(prefix: &str, table: &toml::Table, out: &mut Vec<(String, toml::Value)>) {
    for (k, v) in table {
        let key = if prefix.is_empty() {
            k.clone()
        } else {
            format!("{prefix}.{k}")
        };
        match v {
            toml::Value::Table(t) => flatten(&key, t, out),
            other => out.push((key, other.clone())),
        }
    }
}

/// Every run of the sweep: each variant (or none) × its own grid × the sweep's grid.
fn all_combinations(sweep: &SweepFile) -> Result<Vec<Combination>> {
    if sweep.variants.is_empty() {
        return combinations(&sweep.grid);
    }
    let mut out = Vec::new();
    for (name, table) in &sweep.variants {
        let mut settings = table.clone();
        let own_grid: BTreeMap<String, Vec<toml::Value>> = match settings.remove("grid") {
            None => BTreeMap::new(),
            Some(g) => g.try_into().map_err(|_| {
                anyhow::anyhow!(
                    "variants.{name}.grid must be a table of arrays, e.g. grid = {{ \"algorithm.tau\" = [1, 4] }}"
                )
            })?,
        };
        let mut fixed = Vec::new();
        flatten("", &settings, &mut fixed);
        let seed = Combination {
            settings: Vec::new(),
            label: safe(name),
            variant: Some(name.clone()),
            fixed,
        };
        let with_own = expand(vec![seed], &own_grid, &format!("variants.{name}.grid"))?;
        out.extend(expand(with_own, &sweep.grid, "grid")?);
    }
    Ok(out)
}

/// Keys that switch a kind drop the old kind's keys, so they apply first (outer tables
/// before inner ones); the others keep their order.
fn switch_rank(key: &str) -> usize {
    let last = key.rsplit('.').next().unwrap_or(key);
    if last == "name" || last == "kind" {
        key.matches('.').count()
    } else {
        usize::MAX
    }
}

fn format_eta(seconds: f64) -> String {
    let s = seconds.round() as u64;
    format!("{}m{:02}s", s / 60, s % 60)
}

/// The value of the report's x setting in a run: the first setting named `x` or ending
/// with `.x`, read as a number.
fn x_value(c: &Combination, x: &str) -> Option<f64> {
    let suffix = format!(".{x}");
    let matches = |k: &str| k == x || k.ends_with(&suffix);
    c.settings
        .iter()
        .find(|(k, _)| matches(k))
        .and_then(|(_, v)| v.parse::<f64>().ok())
        .or_else(|| {
            c.fixed
                .iter()
                .find(|(k, _)| matches(k))
                .and_then(|(_, v)| v.as_float().or_else(|| v.as_integer().map(|i| i as f64)))
        })
}

/// Runs a sweep file.
pub fn run(args: &RunArgs) -> Result<()> {
    let text = peloton_topology::text_file::read_text_file(&args.file)
        .with_context(|| format!("cannot read sweep file {}", args.file.display()))?;
    let sweep: SweepFile = toml::from_str(&text).map_err(|e| {
        anyhow::anyhow!(
            "{}: {}",
            args.file.display(),
            e.message().trim().replace('\n', " ")
        )
    })?;
    let dir = args.file.parent().unwrap_or(Path::new("."));
    let stem = args
        .file
        .file_stem()
        .map(|s| s.to_string_lossy().to_string())
        .unwrap_or_else(|| "sweep".into());
    ensure!(
        !args.full || !sweep.full.is_empty(),
        "{} has no [full] section: --full needs one",
        args.file.display()
    );
    let out = match (&args.out, &sweep.out) {
        (Some(o), _) => o.clone(),
        (None, Some(o)) if !args.full => o.clone(),
        (None, Some(o)) => PathBuf::from(format!("{}-full", o.display())),
        (None, None) if args.full => PathBuf::from("runs").join(format!("{stem}-full")),
        (None, None) => PathBuf::from("runs").join(&stem),
    };
    let base = dir.join(&sweep.base);
    let combos = all_combinations(&sweep)?;
    if let Some(g) = &sweep.report.group_by {
        ensure!(
            sweep.grid.contains_key(g),
            "report.group_by = \"{g}\" is not a key of [grid]"
        );
    }
    if let Some(x) = &sweep.report.x {
        ensure!(
            combos.iter().any(|c| x_value(c, x).is_some()),
            "report.x = \"{x}\": no run has a numeric setting of that name"
        );
    }
    let mut full = Vec::new();
    if args.full {
        flatten("", &sweep.full, &mut full);
    }
    let cli: Vec<Override> = args
        .set
        .iter()
        .map(|s| Override::parse(s))
        .collect::<Result<_>>()?;

    // Resolve and validate every configuration before the first run starts.
    let mut configs = Vec::new();
    for c in &combos {
        let mut overrides = Vec::new();
        for (key, value) in &c.fixed {
            overrides.push(Override::new(key, value.clone()));
        }
        for (key, value) in &c.settings {
            if key == "cluster" {
                let spec = if config_preset(value) {
                    value.clone()
                } else {
                    dir.join(value).display().to_string()
                };
                overrides.push(Override::new("transport", config::cluster_table(&spec)?));
            } else {
                overrides.push(Override::parse(&format!("{key}={value}"))?);
            }
        }
        for (key, value) in &full {
            overrides.push(Override::new(key, value.clone()));
        }
        overrides.extend(cli.iter().cloned());
        overrides.sort_by_key(|o| switch_rank(&o.key));
        let config =
            config::load(Some(&base), &overrides).with_context(|| format!("run {}", c.label))?;
        config
            .validate()
            .with_context(|| format!("run {}", c.label))?;
        configs.push(config);
    }
    if let Some(d) = &sweep.description {
        outln!("{d}");
    }
    outln!(
        "{} runs of {} into {}{}",
        combos.len(),
        base.display(),
        out.display(),
        if args.full { " (full budget)" } else { "" }
    );
    if args.dry_run {
        for c in &combos {
            outln!("  {}", c.label);
        }
        return Ok(());
    }

    let started = Instant::now();
    let mut trained = 0usize;
    for (i, (c, config)) in combos.iter().zip(&configs).enumerate() {
        let folder = out.join(&c.label);
        let done = std::fs::read_to_string(folder.join("summary.json"))
            .ok()
            .and_then(|s| serde_json::from_str::<serde_json::Value>(&s).ok())
            .is_some_and(|v| v["status"] == "ok");
        let eta = if trained > 0 {
            let per_run = started.elapsed().as_secs_f64() / trained as f64;
            let left = combos.len() - i;
            format!(" · ETA {}", format_eta(per_run * left as f64))
        } else {
            String::new()
        };
        if done {
            outln!("[{}/{}] {} · already done", i + 1, combos.len(), c.label);
            continue;
        }
        if folder.exists() {
            bail!(
                "{} holds an unfinished run; remove it to run {} again",
                folder.display(),
                c.label
            );
        }
        outln!("[{}/{}] {}{eta}", i + 1, combos.len(), c.label);
        train(
            config,
            &TrainOptions {
                out: Some(folder),
                quiet: true,
                calibrate: None,
            },
        )
        .with_context(|| format!("run {}", c.label))?;
        trained += 1;
    }

    // One report per value of group_by (or one of everything).
    let mut groups: BTreeMap<String, Vec<&Combination>> = BTreeMap::new();
    for c in &combos {
        let group = match &sweep.report.group_by {
            Some(key) => c
                .settings
                .iter()
                .find(|(k, _)| k == key)
                .map(|(k, v)| short(k, v))
                .unwrap_or_default(),
            None => String::new(),
        };
        groups.entry(group).or_default().push(c);
    }
    let x = sweep.report.x.as_deref();
    for (group, members) in groups {
        let name = if group.is_empty() {
            "report".to_string()
        } else {
            format!("report-{group}")
        };
        let runs = members.iter().map(|c| out.join(&c.label)).collect();
        // A run's legend: its variant and the grid values that vary inside the report.
        let label_of = |c: &Combination, skip_x: bool| {
            let grid = c
                .settings
                .iter()
                .filter(|(k, _)| Some(k) != sweep.report.group_by.as_ref())
                .filter(|(k, _)| {
                    !skip_x || x.is_none_or(|x| !(k == x || k.ends_with(&format!(".{x}"))))
                })
                .map(|(k, v)| short(k, v))
                .collect::<Vec<_>>()
                .join("-");
            let l = join_label(c.variant.as_deref().unwrap_or(""), &grid);
            if l.is_empty() {
                "run".into()
            } else {
                l
            }
        };
        let labels = members.iter().map(|c| label_of(c, false)).collect();
        let mut args = ReportArgs::new(runs, labels, out.join(name));
        if let Some(x) = x {
            args.sweep = Some(SweepAxis {
                name: x.to_string(),
                values: members.iter().map(|c| x_value(c, x)).collect(),
                series: members.iter().map(|c| label_of(c, true)).collect(),
            });
        }
        report(&args)?;
    }
    Ok(())
}

fn config_preset(value: &str) -> bool {
    peloton_sim::ClusterConfig::preset(value).is_some()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_grid_expands_in_key_order_with_readable_labels() {
        let grid: BTreeMap<String, Vec<toml::Value>> = toml::from_str(
            "cluster = [\"a/cluster-1g.toml\", \"ethernet-10g\"]\n\"algorithm.name\" = [\"lsgd\", \"sgp\"]",
        )
        .unwrap();
        let combos = combinations(&grid).unwrap();
        let labels: Vec<&str> = combos.iter().map(|c| c.label.as_str()).collect();
        assert_eq!(
            labels,
            [
                "lsgd-cluster-1g",
                "lsgd-ethernet-10g",
                "sgp-cluster-1g",
                "sgp-ethernet-10g"
            ]
        );
        assert_eq!(
            combos[1].settings[1],
            ("cluster".into(), "ethernet-10g".into())
        );
        assert_eq!(format_eta(125.4), "2m05s");
    }

    #[test]
    fn variants_multiply_their_own_grid_and_kinds_switch_first() {
        let sweep: SweepFile = toml::from_str(
            r#"
base = "b.toml"
[grid]
seed = [1, 2]
[variants.dpsgd]
"algorithm.name" = "d-psgd"
[variants.matcha]
algorithm.budget = 0.5
algorithm.name = "matcha"
grid = { "algorithm.budget" = [0.1, 1.0] }
[report]
x = "budget"
"#,
        )
        .unwrap();
        let combos = all_combinations(&sweep).unwrap();
        let labels: Vec<&str> = combos.iter().map(|c| c.label.as_str()).collect();
        assert_eq!(
            labels,
            [
                "dpsgd-1",
                "dpsgd-2",
                "matcha-0.1-1",
                "matcha-0.1-2",
                "matcha-1.0-1",
                "matcha-1.0-2"
            ]
        );
        assert_eq!(x_value(&combos[0], "budget"), None);
        assert_eq!(x_value(&combos[4], "budget"), Some(1.0));
        let mut keys = vec![
            "algorithm.budget",
            "algorithm.schedule.kind",
            "algorithm.name",
        ];
        keys.sort_by_key(|k| switch_rank(k));
        assert_eq!(
            keys,
            [
                "algorithm.name",
                "algorithm.schedule.kind",
                "algorithm.budget"
            ]
        );
    }
}
