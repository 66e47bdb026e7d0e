//! The bodies of the CLI crate's fuzz targets (`fuzz/fuzz_targets/config_toml.rs` and
//! `command_line.rs` call them), kept here so that the stable-toolchain smoke test (`tests/fuzz_smoke.rs`) runs the same
//! code over the seed corpus in every `cargo test`, without nightly or cargo-fuzz.

use crate::command_line;
use crate::config::{self, Override};

/// The experiment loader and its validation. The input is an experiment file, optionally
/// followed by a NUL byte and one `--set KEY=VALUE` per line. Any input must give `Ok` or
/// `Err`, never a panic; an experiment that validates must be written out as TOML and read
/// back to the same text (every run writes its `config.toml` so that `-c` repeats it).
pub fn config_toml(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let (file, sets) = text.split_once('\0').unwrap_or((text, ""));
    let overrides: Vec<Override> = sets
        .lines()
        .filter_map(|l| Override::parse(l).ok())
        .collect();
    let Ok(experiment) = config::parse("fuzz-input", file, &overrides) else {
        return;
    };
    let resolved = experiment.to_toml();
    if !validation_is_hermetic(&experiment, resolved.as_deref().ok())
        || experiment.validate().is_err()
    {
        return;
    }
    let resolved = resolved.expect("a valid experiment is written as TOML");
    let again = config::parse("resolved", &resolved, &[]).unwrap_or_else(|e| {
        panic!("the resolved experiment does not read back: {e:#}\n{resolved}")
    });
    let twice = again.to_toml().expect("written once, written twice");
    assert_eq!(
        twice, resolved,
        "the resolved experiment changed on a round trip"
    );
}

/// The command line: the input is an argument vector, one argument per NUL-separated part
/// (any bytes, not only UTF-8, as a shell can pass), parsed by the binary's own clap structs
/// and checked as each command checks before it works ([`command_line::check`]). Any input
/// must give a parse, a usage line or an error, never a panic.
pub fn command_line(data: &[u8]) {
    use std::os::unix::ffi::OsStringExt;
    let args = std::iter::once(std::ffi::OsString::from("peloton")).chain(
        data.split(|&b| b == 0)
            .map(|a| std::ffi::OsString::from_vec(a.to_vec())),
    );
    let cli = match <command_line::Cli as clap::Parser>::try_parse_from(args) {
        Ok(cli) => cli,
        Err(e) => {
            // The usage line is rendered as the binary renders it; help and version render too.
            match command_line::usage_line(&e) {
                Some(line) => assert!(!line.contains('\n'), "a usage error of several lines"),
                None => drop(e.render().to_string()),
            }
            return;
        }
    };
    if let command_line::Command::Train(args) = &cli.command {
        // A resume reads a run folder: `check` leaves it to the catalog, and so does the
        // fuzzer; nor may it read an experiment or cluster file (see
        // `validation_is_hermetic`).
        let cluster_file = args
            .cluster
            .as_deref()
            .is_some_and(|c| peloton_sim::ClusterConfig::preset(c).is_none());
        if args.resume.is_some() || args.config.is_some() || cluster_file {
            return;
        }
        // `check` of a train command is this experiment's validation: built once here.
        let checked = args.experiment().and_then(|experiment| {
            let toml = experiment.to_toml().ok();
            if validation_is_hermetic(&experiment, toml.as_deref()) {
                experiment.validate()
            } else {
                Ok(())
            }
        });
        if let Err(e) = checked {
            assert_one_line(&e);
        }
        return;
    }
    if let Err(e) = command_line::check(&cli) {
        assert_one_line(&e);
    }
}

/// Whether validating `experiment` (written as `toml`) stays inside the fuzzer and takes
/// microseconds: validation reads graph files, and the fuzzer must not make it read the
/// machine's files (missing, special and hostile files are in the bad-input catalog instead);
/// its cost grows steeply with the worker count (MATCHA's probabilities: 0.7 s at 32 workers,
/// 5 s at 64, a minute at 256), so beyond 16 workers an experiment is parsed and written
/// only (the worker caps are in the catalog).
fn validation_is_hermetic(experiment: &config::ExperimentConfig, toml: Option<&str>) -> bool {
    experiment.workers <= 16 && !toml.is_some_and(|t| t.contains("\"file\""))
}

/// An error must print as one line that says something (`error: …` with its causes).
fn assert_one_line(e: &anyhow::Error) {
    let line = command_line::error_line(e);
    assert!(line.len() > "error: ".len() + 2, "an empty error: {line:?}");
    assert!(!line.contains('\n'), "an error of several lines: {line:?}");
}
