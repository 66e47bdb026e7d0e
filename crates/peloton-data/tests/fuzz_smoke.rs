//! The fuzz targets' bodies on the stable toolchain: every seed of `fuzz/corpus/{idx,cifar}`
//! and a few thousand seeded random mutations of them, so that `cargo test` (and CI, which has
//! no nightly toolchain or cargo-fuzz) runs what the fuzzer runs. The long runs are in
//! docs/RELIABILITY.md.

use std::path::PathBuf;

use peloton_data::fuzz_entry::{self, mutate};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

const MUTATIONS: usize = 3000;

fn corpus(target: &str) -> Vec<Vec<u8>> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../fuzz/corpus")
        .join(target);
    let mut seeds: Vec<Vec<u8>> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| std::fs::read(e.unwrap().path()).unwrap())
        .collect();
    seeds.sort();
    assert!(seeds.len() >= 3, "{}: too few seeds", dir.display());
    seeds
}

fn smoke(target: &str, body: fn(&[u8]), dictionary: &[&[u8]]) {
    let seeds = corpus(target);
    for seed in &seeds {
        body(seed);
    }
    let mut rng = ChaCha8Rng::seed_from_u64(7);
    for i in 0..MUTATIONS {
        body(&mutate(&seeds[i % seeds.len()], dictionary, &mut rng));
    }
}

#[test]
fn idx_reader_survives_the_corpus_and_its_mutations() {
    smoke(
        "idx",
        fuzz_entry::idx,
        &[&[0, 0, 8, 3], &[0, 0, 8, 1], &[0x1f, 0x8b]],
    );
}

#[test]
fn cifar_reader_survives_the_corpus_and_its_mutations() {
    smoke("cifar", fuzz_entry::cifar, &[&[10], &[0x1f, 0x8b, 8, 0]]);
}
