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
//! [report]
//! group_by = "cluster"                       # default: one report of every run
//! ```

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, ensure, Context, Result};
use serde::Deserialize;

use crate::config::{self, Override};
use crate::report::{report, ReportArgs};
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
    #[serde(default)]
    report: ReportSection,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ReportSection {
    #[serde(default)]
    group_by: Option<String>,
}

/// One combination of the grid.
#[derive(Debug, Clone)]
struct Combination {
    /// (key, value as written) in grid order.
    settings: Vec<(String, String)>,
    label: String,
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

fn combinations(grid: &BTreeMap<String, Vec<toml::Value>>) -> Result<Vec<Combination>> {
    let mut out = vec![Combination {
        settings: Vec::new(),
        label: String::new(),
    }];
    for (key, values) in grid {
        ensure!(!values.is_empty(), "grid.{key} has no values");
        out = out
            .into_iter()
            .flat_map(|c| {
                values.iter().map(move |v| {
                    let mut next = c.clone();
                    let text = value_text(v);
                    next.label = if next.label.is_empty() {
                        short(key, &text)
                    } else {
                        format!("{}-{}", next.label, short(key, &text))
                    };
                    next.settings.push((key.clone(), text));
                    next
                })
            })
            .collect();
    }
    Ok(out)
}

fn format_eta(seconds: f64) -> String {
    let s = seconds.round() as u64;
    format!("{}m{:02}s", s / 60, s % 60)
}

/// Runs a sweep file.
pub fn run(args: &RunArgs) -> Result<()> {
    let text = std::fs::read_to_string(&args.file)
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
    let out = sweep
        .out
        .clone()
        .unwrap_or_else(|| PathBuf::from("runs").join(&stem));
    let base = dir.join(&sweep.base);
    let combos = combinations(&sweep.grid)?;
    if let Some(g) = &sweep.report.group_by {
        ensure!(
            sweep.grid.contains_key(g),
            "report.group_by = \"{g}\" is not a key of [grid]"
        );
    }

    // Resolve and validate every configuration before the first run starts.
    let mut configs = Vec::new();
    for c in &combos {
        let mut overrides = Vec::new();
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
        let config =
            config::load(Some(&base), &overrides).with_context(|| format!("run {}", c.label))?;
        config
            .validate()
            .with_context(|| format!("run {}", c.label))?;
        configs.push(config);
    }
    if let Some(d) = &sweep.description {
        println!("{d}");
    }
    println!(
        "{} runs of {} into {}",
        combos.len(),
        base.display(),
        out.display()
    );
    if args.dry_run {
        for c in &combos {
            println!("  {}", c.label);
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
            println!("[{}/{}] {} · already done", i + 1, combos.len(), c.label);
            continue;
        }
        if folder.exists() {
            bail!(
                "{} holds an unfinished run; remove it to run {} again",
                folder.display(),
                c.label
            );
        }
        println!("[{}/{}] {}{eta}", i + 1, combos.len(), c.label);
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
    for (group, members) in groups {
        let name = if group.is_empty() {
            "report".to_string()
        } else {
            format!("report-{group}")
        };
        let runs = members.iter().map(|c| out.join(&c.label)).collect();
        let labels = members
            .iter()
            .map(|c| {
                c.settings
                    .iter()
                    .filter(|(k, _)| Some(k) != sweep.report.group_by.as_ref())
                    .map(|(k, v)| short(k, v))
                    .collect::<Vec<_>>()
                    .join("-")
            })
            .map(|l| if l.is_empty() { "run".into() } else { l })
            .collect();
        report(&ReportArgs::new(runs, labels, out.join(name)))?;
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
}
