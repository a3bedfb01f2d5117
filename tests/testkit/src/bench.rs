//! What the benchmarks (radius-helper/benches/) share: their command line and the load average
//! they print beside every figure.

/// `--sizes 100,1000,10000` (session counts) and `--iters N`; anything else is ignored (cargo
/// bench passes `--bench`).
pub struct BenchArgs {
    pub sizes: Vec<usize>,
    pub iters: usize,
}

/// The benchmark's arguments; without them, 100, 1,000 and 10,000 sessions and `default_iters`.
pub fn bench_args(default_iters: usize) -> BenchArgs {
    let mut a = BenchArgs { sizes: vec![100, 1_000, 10_000], iters: default_iters };
    let argv: Vec<String> = std::env::args().collect();
    let mut i = 1;
    while i < argv.len() {
        match argv[i].as_str() {
            "--sizes" => {
                a.sizes = argv[i + 1].split(',').map(|s| s.parse().expect("size")).collect();
                i += 1;
            }
            "--iters" => {
                a.iters = argv[i + 1].parse().expect("iters");
                i += 1;
            }
            _ => {}
        }
        i += 1;
    }
    a
}

/// The first three fields of /proc/loadavg ("" when unreadable).
pub fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}
