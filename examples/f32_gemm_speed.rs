//! The AVX-512 f32 GEMM (`linalg::f32gemm`, weight packed in panels) against
//! the `gemm` crate (`linalg::sgemm` on the `[k, n]` transposed weight, bias
//! filled first, as `Linear` ran it) on MiniLM's Linear shapes and a few
//! more, 1 and 2 threads: `cargo run --release --example f32_gemm_speed
//! [MxKxN,...]`. Prints GFLOP/s, bias included: the fastest of alternating
//! batches (1 thread: by the thread's CPU time, so that other processes on
//! a shared machine disturb less). `COLD=1` cycles through 64 MiB of weight
//! copies (each call's weight out of cache, as in a model's forward pass).

use std::time::Instant;

use wginfer::linalg::{self, f32gemm::PackedF32, MatRef};
use wginfer::ops::CaseRng;

/// This thread's CPU time in seconds (`libc` is a dependency on glibc Linux only).
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn thread_cpu() -> f64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `ts` is a valid timespec to write.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    ts.tv_sec as f64 + ts.tv_nsec as f64 * 1e-9
}

/// Elsewhere: wall time.
#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn thread_cpu() -> f64 {
    static START: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    START.get_or_init(Instant::now).elapsed().as_secs_f64()
}

/// Seconds per call of `f` and `g`, timed alternately (so load from other
/// processes hits both alike) over about half a second: the fastest of
/// batches of calls (the least disturbed).
fn time2(mut f: impl FnMut(), mut g: impl FnMut()) -> (f64, f64) {
    // One thread: this thread's CPU time (time preempted by other processes
    // left out); more: wall time.
    let cpu = rayon::current_num_threads() == 1;
    let once = |h: &mut dyn FnMut(), reps: usize| {
        let (t, c) = (Instant::now(), thread_cpu());
        for _ in 0..reps {
            h();
        }
        if cpu {
            (thread_cpu() - c) / reps as f64
        } else {
            t.elapsed().as_secs_f64() / reps as f64
        }
    };
    f();
    g();
    let per = once(&mut f, 3).max(1e-7);
    let reps = ((0.005 / per) as usize).clamp(1, 1000);
    let (mut tf, mut tg) = (f64::MAX, f64::MAX);
    let start = Instant::now();
    while start.elapsed().as_secs_f64() < 0.5 {
        tf = tf.min(once(&mut f, reps));
        tg = tg.min(once(&mut g, reps));
    }
    (tf, tg)
}

fn main() {
    let mut rng = CaseRng::new(5);
    let shapes: Vec<(usize, usize, usize)> = match std::env::args().nth(1) {
        Some(s) => s
            .split(',')
            .filter_map(|t| {
                let v: Vec<usize> = t.split('x').filter_map(|d| d.parse().ok()).collect();
                (v.len() == 3).then(|| (v[0], v[1], v[2]))
            })
            .collect(),
        None => {
            let mut v = Vec::new();
            for m in [128usize, 1, 8, 64, 512] {
                v.extend([(m, 384, 384), (m, 384, 1536), (m, 1536, 384)]);
            }
            v
        }
    };
    println!("| m × k → n | threads | gemm GFLOP/s | f32gemm GFLOP/s | speedup |");
    println!("|---|---|---|---|---|");
    for (m, k, n) in shapes {
        let x = rng.tensor(&[m, k], -1.0, 1.0);
        let w = rng.tensor(&[n, k], -1.0, 1.0);
        let b = rng.tensor(&[n], -1.0, 1.0);
        let (x, w, b) = (x.as_f32().unwrap(), w.as_f32().unwrap(), b.as_f32().unwrap());
        let mut wt = vec![0.0f32; n * k];
        for o in 0..n {
            for i in 0..k {
                wt[i * n + o] = w[o * k + i];
            }
        }
        // COLD=1: cycle through copies of the weight (64 MiB in all), so each
        // call finds its weight out of cache, as in a model's forward pass.
        let copies = if std::env::var("COLD").is_ok_and(|v| v == "1") {
            ((64usize << 20) / (4 * n * k).max(1)).max(1)
        } else {
            1
        };
        let wts = vec![wt; copies];
        let Some(packed) = PackedF32::new(w, n, k) else {
            println!("no AVX-512F: nothing to compare");
            return;
        };
        let packs = vec![packed; copies];
        let (mut ig, mut ip) = (0usize, 0usize);
        let mut y = vec![0.0f32; m * n];
        let mut y2 = vec![0.0f32; m * n];
        let flop = 2.0 * (m * n * k) as f64;
        for threads in [1usize, 2] {
            let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
            let (tg, tp) = pool.install(|| {
                time2(
                    || {
                        for row in y.chunks_mut(n) {
                            row.copy_from_slice(b);
                        }
                        ig = (ig + 1) % copies;
                        linalg::sgemm(
                            MatRef::row_major(x, m, k),
                            MatRef::row_major(&wts[ig], k, n),
                            &mut y,
                            true,
                        )
                        .unwrap();
                        std::hint::black_box(&y);
                    },
                    || {
                        ip = (ip + 1) % copies;
                        packs[ip].run(x, m, Some(b), false, &mut y2);
                        std::hint::black_box(&y2);
                    },
                )
            });
            let err = y.iter().zip(&y2).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
            assert!(err < 1e-3, "{m}x{k}->{n}: max |diff| {err}");
            println!(
                "| {m} × {k} → {n} | {threads} | {:.1} | {:.1} | {:.2}x |",
                flop / tg / 1e9,
                flop / tp / 1e9,
                tg / tp
            );
        }
    }
}
