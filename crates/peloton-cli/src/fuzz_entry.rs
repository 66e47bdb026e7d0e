//! The body of the experiment loader's fuzz target (`fuzz/fuzz_targets/config_toml.rs` calls
//! it), kept here so that the stable-toolchain smoke test (`tests/fuzz_smoke.rs`) runs the same
//! code over the seed corpus in every `cargo test`, without nightly or cargo-fuzz.

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
    if let Ok(text) = &resolved {
        // Validation reads graph files; the fuzzer must not make it read the machine's files
        // (a missing or unreadable file is in the bad-input catalog instead).
        if text.contains("\"file\"") {
            return;
        }
    }
    // Validation's cost grows steeply with the worker count (MATCHA's probabilities: 0.7 s at
    // 32 workers, 5 s at 64, a minute at 256), which would stall the fuzzer; beyond 16
    // workers an experiment is parsed and written only. The worker caps are in the catalog.
    if experiment.workers > 16 || experiment.validate().is_err() {
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
