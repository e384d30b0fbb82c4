//! A tiny deterministic mutation fuzzer for unit tests (no dependency).
//!
//! Owns input generation only: seeds are mutated with byte flips, inserted
//! syntax fragments, deleted and repeated spans, so parsers of outside input
//! (job requests, API answers, config files) can be checked for panics and
//! hangs. Must stay test-only and bounded: fixed seed, fixed iteration count.

/// Fragments that tend to reach odd corners of JSON and YAML parsers.
const FRAGMENTS: &[&str] = &[
    "{",
    "}",
    "[",
    "]",
    "\"",
    ":",
    ",",
    "null",
    "true",
    "-1",
    "1e999",
    "-0",
    "18446744073709551616",
    "0.5",
    "\\u0000",
    "\\ud800",
    "\\",
    "\n",
    "  ",
    "\t",
    "- ",
    "&a ",
    "*a",
    "!!binary ",
    "!!map",
    "? ",
    "|\n",
    ">-\n",
    "---\n",
    "...\n",
    "#",
    "'",
    "%YAML 1.2\n",
    "<<: *a\n",
    "\u{feff}",
    "\u{0}",
    "é",
    "\u{10ffff}",
    "~",
    "=",
    "0o777",
    "0x1F",
];

/// xorshift64*: good enough spread, fully reproducible.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.max(1))
    }

    pub fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    pub fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.next() % n as u64) as usize
        }
    }
}

/// One to four random edits of `input`, returned as (lossy) text.
pub fn mutate(rng: &mut Rng, input: &str) -> String {
    let mut bytes = input.as_bytes().to_vec();
    for _ in 0..=rng.below(4) {
        let at = rng.below(bytes.len() + 1);
        match rng.below(6) {
            0 if !bytes.is_empty() => {
                let i = rng.below(bytes.len());
                bytes[i] ^= 1 << rng.below(8);
            }
            1 | 2 => {
                let frag = FRAGMENTS[rng.below(FRAGMENTS.len())];
                bytes.splice(at..at, frag.bytes());
            }
            3 => {
                let end = (at + rng.below(16)).min(bytes.len());
                bytes.drain(at..end);
            }
            4 => {
                let end = (at + rng.below(32)).min(bytes.len());
                let span = bytes[at..end].to_vec();
                for _ in 0..rng.below(8) {
                    bytes.splice(at..at, span.iter().copied());
                }
            }
            _ => bytes.truncate(at),
        }
    }
    String::from_utf8_lossy(&bytes).into_owned()
}

/// Runs `check` on every seed and on `rounds` mutations of each; panics
/// (failing the test) with the input that made `check` panic.
pub fn run(seeds: &[&str], rounds: usize, check: impl Fn(&str)) {
    let mut rng = Rng::new(0x5EED_AB1E_C0FF_EE11);
    let mut inputs: Vec<String> = seeds.iter().map(|s| s.to_string()).collect();
    for i in 0..rounds {
        let base = if i % 3 == 2 && !inputs.is_empty() {
            // Sometimes build on an earlier mutant to go deeper.
            inputs[rng.below(inputs.len())].clone()
        } else {
            seeds[rng.below(seeds.len())].to_string()
        };
        let input = mutate(&mut rng, &base);
        if inputs.len() < 4096 {
            inputs.push(input);
        } else {
            let slot = rng.below(inputs.len());
            inputs[slot] = input;
        }
    }
    for input in &inputs {
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| check(input)));
        assert!(outcome.is_ok(), "panicked on input {input:?}");
    }
}
