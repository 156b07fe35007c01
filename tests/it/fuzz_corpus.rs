//! The fuzz targets' smoke run on stable: every seed in `fuzz/corpus/<target>/`
//! and deterministic mutations of it (truncations, bit flips, byte
//! insertions) go through the target, which must not panic. `cargo +nightly
//! fuzz run <target>` explores further from the same corpus.

use std::path::Path;

fn mutations(seed: &[u8]) -> Vec<Vec<u8>> {
    let mut out = vec![seed.to_vec()];
    let n = seed.len();
    let step = (n / 64).max(1);
    for i in (0..n).step_by(step) {
        out.push(seed[..i].to_vec());
        for bit in [0x01u8, 0x80] {
            let mut m = seed.to_vec();
            m[i] ^= bit;
            out.push(m);
        }
        let mut m = seed.to_vec();
        m.insert(i, 0xff);
        out.push(m);
    }
    out
}

#[test]
fn every_fuzz_target_survives_its_corpus_and_mutations() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz")
        .join("corpus");
    for (name, target) in beacon::tools::fuzzing::TARGETS {
        let dir = root.join(name);
        let mut seeds = 0;
        let mut inputs = 0;
        for e in std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            .flatten()
        {
            let seed = std::fs::read(e.path()).expect("seed");
            seeds += 1;
            for m in mutations(&seed) {
                target(&m);
                inputs += 1;
            }
        }
        assert!(seeds > 0, "no seeds for {name}");
        eprintln!("{name}: {seeds} seeds, {inputs} inputs");
    }
}
