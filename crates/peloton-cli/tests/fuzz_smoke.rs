//! The config fuzz target's body on the stable toolchain: every seed of `fuzz/corpus/config_toml`
//! and a few thousand seeded random mutations of them (bytes and TOML tokens), so that
//! `cargo test` (and CI, which has no nightly toolchain or cargo-fuzz) runs what the fuzzer
//! runs. The long runs are in docs/RELIABILITY.md.

use std::path::PathBuf;

use peloton_cli::fuzz_entry::config_toml;
use peloton_data::fuzz_entry::mutate;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

const MUTATIONS: usize = 2000;

/// Tokens that make mutated experiments interesting: keys, section headers, names and values
/// at the edges.
const TOKENS: [&str; 24] = [
    "\nworkers = ",
    "\nsteps = ",
    "\n[algorithm]\nname = ",
    "\n[optimizer]\nlr = ",
    "\n[transport]\nkind = \"sim\"\n",
    "\n[problem]\nkind = \"softmax\"\n",
    "\"lsgd\"",
    "\"sgp\"",
    "\"matcha\"",
    "group_size = ",
    "tau = ",
    "0",
    "1",
    "-1",
    "3",
    "1e309",
    "nan",
    "inf",
    "18446744073709551615",
    "0.5",
    "[",
    "\"",
    "\0",
    "\nalgorithm.tau=",
];

/// The committed seed corpus of fuzz target `target`, sorted; at least `minimum` files.
fn seeds(target: &str, minimum: usize) -> Vec<Vec<u8>> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../fuzz/corpus")
        .join(target);
    let mut seeds: Vec<Vec<u8>> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| std::fs::read(e.unwrap().path()).unwrap())
        .collect();
    seeds.sort();
    assert!(seeds.len() >= minimum, "{}: too few seeds", dir.display());
    seeds
}

#[test]
fn config_loader_survives_the_corpus_and_its_mutations() {
    let seeds = seeds("config_toml", 5);
    for seed in &seeds {
        config_toml(seed);
    }
    let tokens: Vec<&[u8]> = TOKENS.iter().map(|t| t.as_bytes()).collect();
    let mut rng = ChaCha8Rng::seed_from_u64(11);
    for i in 0..MUTATIONS {
        config_toml(&mutate(&seeds[i % seeds.len()], &tokens, &mut rng));
    }
}

/// The checkpoint fuzz target's body over its seed and a few thousand mutations. Most
/// mutations fail the CRC; the ones that keep the header and fix nothing else check the
/// header paths, and a payload mutated with a recomputed CRC checks the decoder itself.
#[test]
fn checkpoint_reader_survives_mutations() {
    use peloton_core::checkpoint::{fuzz_decode, sample_file};
    let seed = sample_file();
    fuzz_decode(&seed);
    let mut rng = ChaCha8Rng::seed_from_u64(12);
    for i in 0..MUTATIONS {
        let mut bytes = mutate(&seed, &[b"PELOTON\x1a", &[0xff; 9]], &mut rng);
        if i % 2 == 1 && bytes.len() > 24 {
            // Make the header agree with the mutated payload, so the decoder sees it.
            let len = (bytes.len() - 24) as u64;
            let crc = crc32fast::hash(&bytes[24..]);
            bytes[12..16].copy_from_slice(&crc.to_le_bytes());
            bytes[16..24].copy_from_slice(&len.to_le_bytes());
        }
        fuzz_decode(&bytes);
    }
}

/// Arguments and values that make mutated command lines interesting: every subcommand and
/// flag kind, numbers at their type's edges, `--set` keys.
const ARGUMENTS: [&str; 30] = [
    "\0train",
    "\0--algorithm\0",
    "\0--workers\0",
    "\0--steps\0",
    "\0--epochs\0",
    "\0--time-budget\0",
    "\0--slowdown\0",
    "\0--set\0",
    "\0--transport\0sim",
    "\0--cluster\0ethernet-1g",
    "\0--model\0",
    "\0--print-config",
    "\0topology\0show\0--n\0",
    "\0--rounds\0",
    "\0--budget\0",
    "\0bench\0--sim\0--messages\0",
    "algorithm.tau=",
    "lsgd",
    "matcha",
    "easgd",
    "0",
    "1",
    "-1",
    "1e300",
    "nan",
    "18446744073709551615",
    "4611686018427387904",
    "3=1e9",
    "\u{ff}\u{fe}",
    "=",
];

#[test]
fn command_line_survives_the_corpus_and_its_mutations() {
    use peloton_cli::fuzz_entry::command_line;
    let seeds = seeds("command_line", 10);
    for seed in &seeds {
        command_line(seed);
    }
    let tokens: Vec<&[u8]> = ARGUMENTS.iter().map(|t| t.as_bytes()).collect();
    let mut rng = ChaCha8Rng::seed_from_u64(13);
    // A parse and its checks take microseconds: more mutations than the other targets get.
    for i in 0..5 * MUTATIONS {
        command_line(&mutate(&seeds[i % seeds.len()], &tokens, &mut rng));
    }
}
