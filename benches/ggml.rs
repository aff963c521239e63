//! GGUF block products on the CPU, at SmolLM2-135M's shapes: matrix-vector
//! (decoding; throughput in weight bytes read) with 16-bit activations (the
//! default for up to 7 rows) beside 8-bit ones, and 128-token products
//! (prompts; throughput in multiply-adds), the portable kernel beside the
//! fastest, one decode step's worth of matrices (about 96 MB, more than the
//! last-level cache, so it measures memory, not cache), and a plain copy for
//! the machine's bandwidth.
//!
//! `RAYON_NUM_THREADS=1 cargo bench --bench ggml` (and `=2`) for the thread
//! counts llama.cpp is compared at. At 1 thread the products are timed by
//! the thread's CPU time (time other processes take the core is left out).

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use wginfer::linalg::ggml::{
    quantize_acts, quantize_acts16, ActPrecision, BlockFormat, Kernel, QActs, QActs16, QMatrix,
};

/// This thread's CPU time (`libc` is a dependency on glibc Linux only).
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn thread_cpu() -> Duration {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `ts` is a valid timespec to write.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// Elsewhere: wall time.
#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn thread_cpu() -> Duration {
    static START: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    START.get_or_init(Instant::now).elapsed()
}

/// The time of `iters` calls of `f`: the thread's CPU time at 1 thread
/// (everything runs on this thread), else wall time.
fn timed(iters: u64, mut f: impl FnMut()) -> Duration {
    if rayon::current_num_threads() == 1 {
        let c = thread_cpu();
        for _ in 0..iters {
            f();
        }
        thread_cpu() - c
    } else {
        let t = Instant::now();
        for _ in 0..iters {
            f();
        }
        t.elapsed()
    }
}

/// Random blocks with small finite scales (every f16 field set to 0.01).
fn random_matrix(format: BlockFormat, rows: usize, cols: usize, seed: u64) -> QMatrix {
    let len = format.row_bytes(cols).expect("whole blocks") * rows;
    let mut s = seed | 1;
    let mut data: Vec<u8> = (0..len)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            (s >> 32) as u8
        })
        .collect();
    let scale = half::f16::from_f32(0.01).to_le_bytes();
    let fields: &[usize] = match format {
        BlockFormat::Q4_0 | BlockFormat::Q5_0 | BlockFormat::Q8_0 => &[0],
        BlockFormat::Q6_K => &[208],
        _ => &[0, 2],
    };
    for block in data.chunks_exact_mut(format.block_bytes()) {
        for &at in fields {
            block[at..at + 2].copy_from_slice(&scale);
        }
    }
    QMatrix::new(format, rows, cols, data).expect("sizes")
}

fn activations(n: usize, cols: usize) -> Vec<f32> {
    (0..n * cols)
        .map(|i| ((i * 7919) % 1000) as f32 / 500.0 - 1.0)
        .collect()
}

const SHAPES: [(BlockFormat, usize, usize); 6] = [
    (BlockFormat::Q4_1, 576, 576),
    (BlockFormat::Q4_1, 1536, 576),
    (BlockFormat::Q4_1, 576, 1536),
    (BlockFormat::Q8_0, 49152, 576),
    (BlockFormat::Q4_K, 576, 1536),
    (BlockFormat::Q6_K, 576, 1536),
];

fn label(format: BlockFormat, rows: usize, cols: usize) -> String {
    format!("{}-{rows}x{cols}", format.name())
}

fn matvec(c: &mut Criterion) {
    let mut g = c.benchmark_group("ggml-matvec");
    for (format, rows, cols) in SHAPES {
        let m = random_matrix(format, rows, cols, 11);
        let x = activations(1, cols);
        let mut out = vec![0f32; rows];
        g.throughput(Throughput::Bytes(m.data().len() as u64));
        for (name, precision) in [("best-i16", ActPrecision::Int16), ("best-i8", ActPrecision::Int8)] {
            g.bench_function(BenchmarkId::new(name, label(format, rows, cols)), |b| {
                b.iter_custom(|iters| {
                    timed(iters, || {
                        m.matmul_with(Kernel::best(), precision, black_box(&x), 1, &mut out)
                    })
                })
            });
        }
        if rows * cols <= 576 * 576 {
            g.bench_function(BenchmarkId::new("portable-i16", label(format, rows, cols)), |b| {
                b.iter(|| m.matmul_with(Kernel::Portable, ActPrecision::Int16, black_box(&x), 1, &mut out))
            });
        }
    }
    g.finish();
}

fn matmul128(c: &mut Criterion) {
    let mut g = c.benchmark_group("ggml-matmul128");
    g.sample_size(20);
    let n = 128;
    for (format, rows, cols) in SHAPES {
        if rows > 4096 {
            continue;
        }
        let m = random_matrix(format, rows, cols, 13);
        let x = activations(n, cols);
        let mut out = vec![0f32; n * rows];
        g.throughput(Throughput::Elements((n * rows * cols) as u64));
        g.bench_function(BenchmarkId::new("best", label(format, rows, cols)), |b| {
            b.iter(|| m.matmul(black_box(&x), n, &mut out))
        });
    }
    g.finish();
}

/// One decode step's matrices of SmolLM2-135M Q4_1 (30 layers of q, k, v, o,
/// gate, up, down, and the Q8_0 output head), each read once per iteration.
fn decode_step(c: &mut Criterion) {
    let (d, kv, ff) = (576, 192, 1536);
    let mut mats = Vec::new();
    for layer in 0..30u64 {
        for (i, (rows, cols)) in [(d, d), (kv, d), (kv, d), (d, d), (ff, d), (ff, d), (d, ff)]
            .into_iter()
            .enumerate()
        {
            mats.push(random_matrix(BlockFormat::Q4_1, rows, cols, layer * 16 + i as u64 + 1));
        }
    }
    mats.push(random_matrix(BlockFormat::Q8_0, 49152, d, 7));
    let bytes: usize = mats.iter().map(|m| m.data().len()).sum();
    let mut outs: Vec<Vec<f32>> = mats.iter().map(|m| vec![0f32; m.rows()]).collect();
    let xs = [activations(1, d), activations(1, ff)];
    let mut acts = [QActs::default(), QActs::default()];
    let mut acts16 = [QActs16::default(), QActs16::default()];
    for ((a, a16), x) in acts.iter_mut().zip(acts16.iter_mut()).zip(&xs) {
        quantize_acts(x, 1, x.len(), 32, a);
        quantize_acts16(x, 1, x.len(), a16);
    }
    let mut g = c.benchmark_group("ggml-decode-step");
    g.sample_size(20);
    g.throughput(Throughput::Bytes(bytes as u64));
    let id = |name| BenchmarkId::new(name, format!("smollm2-{}MB", bytes >> 20));
    g.bench_function(id("best-i16"), |b| {
        b.iter_custom(|iters| {
            timed(iters, || {
                for (m, out) in mats.iter().zip(outs.iter_mut()) {
                    let a = if m.cols() == d { &acts16[0] } else { &acts16[1] };
                    m.matmul_acts16(Kernel::best(), a, out);
                }
            })
        })
    });
    g.bench_function(id("best-i8"), |b| {
        b.iter_custom(|iters| {
            timed(iters, || {
                for (m, out) in mats.iter().zip(outs.iter_mut()) {
                    let a = if m.cols() == d { &acts[0] } else { &acts[1] };
                    m.matmul_acts(Kernel::best(), a, out);
                }
            })
        })
    });
    g.finish();
}

/// `n` rows of 16-bit activations against each matrix of `shapes`
/// (`rows × cols`), for each `n` of `ns`, timed through `product`;
/// throughput in multiply-adds.
fn rows16_group(
    c: &mut Criterion,
    name: &str,
    shapes: &[(BlockFormat, usize, usize)],
    ns: &[usize],
    product: impl Fn(&QMatrix, &QActs16, &mut [f32]),
) {
    let mut g = c.benchmark_group(name);
    g.sample_size(10);
    for &(format, rows, cols) in shapes {
        let m = random_matrix(format, rows, cols, 17);
        for &n in ns {
            let mut acts = QActs16::default();
            quantize_acts16(&activations(n, cols), n, cols, &mut acts);
            let mut out = vec![0f32; n * rows];
            product(&m, &acts, &mut out);
            g.throughput(Throughput::Elements((n * rows * cols) as u64));
            let id = BenchmarkId::new(format!("n{n}"), label(format, rows, cols));
            g.bench_function(id, |b| {
                b.iter_custom(|iters| timed(iters, || product(&m, black_box(&acts), &mut out)))
            });
        }
    }
    g.finish();
}

/// Batched decoding's products on the packed rows (the k-quants' path):
/// `n` activation rows (one per sequence) of 16-bit activations against
/// SmolLM2-135M's matrices (q/o, k/v, gate/up, down, and the Q8_0 output
/// head).
fn batched16(c: &mut Criterion) {
    let shapes = [
        (BlockFormat::Q4_1, 576, 576),
        (BlockFormat::Q4_1, 192, 576),
        (BlockFormat::Q4_1, 1536, 576),
        (BlockFormat::Q4_1, 576, 1536),
        (BlockFormat::Q8_0, 49152, 576),
    ];
    rows16_group(c, "ggml-batched16", &shapes, &[1, 4, 8, 16, 32], |m, acts, out| {
        m.matmul_acts16(Kernel::best(), acts, out)
    });
}

/// As [`batched16`] on the same matrices repacked in panels of eight rows
/// ([`QMatrix::panels`], made by the first, untimed call): the decoding
/// path of the 32-weight formats.
fn panel(c: &mut Criterion) {
    let shapes = [
        (BlockFormat::Q4_1, 1536, 576),
        (BlockFormat::Q4_1, 576, 1536),
        (BlockFormat::Q8_0, 49152, 576),
    ];
    rows16_group(c, "ggml-panel", &shapes, &[1, 8, 32], |m, acts, out| {
        if let Some(p) = m.panels() {
            p.matmul_acts16(Kernel::best(), acts, out);
        }
    });
}

/// As [`batched16`] with 8-bit activations per block (llama.cpp's
/// precision): what batched decoding would cost at that precision.
fn batched8(c: &mut Criterion) {
    let shapes = [
        (BlockFormat::Q4_1, 1536, 576),
        (BlockFormat::Q4_1, 576, 1536),
        (BlockFormat::Q8_0, 49152, 576),
    ];
    let mut g = c.benchmark_group("ggml-batched8");
    g.sample_size(10);
    for (format, rows, cols) in shapes {
        let m = random_matrix(format, rows, cols, 17);
        for n in [1, 8, 32] {
            let mut acts = QActs::default();
            quantize_acts(&activations(n, cols), n, cols, 32, &mut acts);
            let mut out = vec![0f32; n * rows];
            g.throughput(Throughput::Elements((n * rows * cols) as u64));
            let id = BenchmarkId::new(format!("n{n}"), label(format, rows, cols));
            g.bench_function(id, |b| {
                b.iter_custom(|iters| timed(iters, || m.matmul_acts(Kernel::best(), black_box(&acts), &mut out)))
            });
        }
    }
    g.finish();
}

/// Row dequantization (the prompt path dequantizes weights a chunk at a
/// time for the f32 GEMM): a 576 × 1536 matrix (SmolLM2's down
/// projection) per iteration, throughput in weights.
fn dequantize(c: &mut Criterion) {
    let mut g = c.benchmark_group("ggml-dequantize");
    g.sample_size(20);
    let (rows, cols) = (576, 1536);
    for format in [
        BlockFormat::Q4_1,
        BlockFormat::Q8_0,
        BlockFormat::Q4_K,
        BlockFormat::Q5_K,
        BlockFormat::Q6_K,
    ] {
        let m = random_matrix(format, rows, cols, 19);
        let mut out = vec![0f32; cols];
        g.throughput(Throughput::Elements((rows * cols) as u64));
        g.bench_function(BenchmarkId::new("best", label(format, rows, cols)), |b| {
            b.iter_custom(|iters| {
                timed(iters, || {
                    for r in 0..rows {
                        m.dequantize_row(r, black_box(&mut out));
                    }
                })
            })
        });
    }
    g.finish();
}

/// The machine's copy bandwidth: 128 MB copied per iteration (bytes counted once).
fn copy(c: &mut Criterion) {
    let src = vec![1u8; 128 << 20];
    let mut dst = vec![0u8; 128 << 20];
    let mut g = c.benchmark_group("memcpy");
    g.sample_size(20);
    g.throughput(Throughput::Bytes(src.len() as u64));
    g.bench_function("128MB", |b| {
        b.iter_custom(|iters| timed(iters, || dst.copy_from_slice(black_box(&src))))
    });
    g.finish();
}

criterion_group!(
    benches,
    matvec,
    matmul128,
    decode_step,
    batched16,
    batched8,
    panel,
    dequantize,
    copy
);
criterion_main!(benches);
