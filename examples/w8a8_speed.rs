//! W8A8 vs f32 linear layers on the CPU, through the ops' prepared paths (as
//! a session runs them): `cargo run --release --example w8a8_speed`
//! (`RAYON_NUM_THREADS` sets the threads).

use std::time::Instant;

use wginfer::ops::{linear::Linear, qlinear::QLinear, CaseRng, Op};
use wginfer::quant::{self, WeightFormat};
use wginfer::Tensor;

/// Median seconds per call of `f` over about half a second.
fn time(mut f: impl FnMut()) -> f64 {
    f();
    let start = Instant::now();
    let mut reps = 0;
    while start.elapsed().as_secs_f64() < 0.1 {
        f();
        reps += 1;
    }
    let per = start.elapsed().as_secs_f64() / reps as f64;
    let n = ((0.5 / per) as usize).clamp(5, 200);
    let mut v: Vec<f64> = (0..n)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed().as_secs_f64()
        })
        .collect();
    v.sort_by(f64::total_cmp);
    v[n / 2]
}

fn run(op: &dyn Op, inputs: &[Tensor]) -> f64 {
    let refs: Vec<&Tensor> = inputs.iter().collect();
    let consts: Vec<Option<&Tensor>> = (0..inputs.len()).map(|i| (i > 0).then(|| &inputs[i])).collect();
    match op.prepare_cpu(&consts) {
        Some(p) => time(|| {
            std::hint::black_box(op.cpu_prepared(&refs, &p).map(|v| v.len()).unwrap_or(0));
        }),
        None => time(|| {
            std::hint::black_box(op.cpu(&refs).map(|v| v.len()).unwrap_or(0));
        }),
    }
}

fn main() {
    let mut rng = CaseRng::new(11);
    println!("threads {}", rayon::current_num_threads());
    for (m, k, n) in [
        (1024usize, 1024usize, 1024usize),
        (128, 384, 384),
        (128, 384, 1536),
        (128, 1536, 384),
        (1, 1024, 1024),
    ] {
        let x = rng.tensor(&[m, k], -1.0, 1.0);
        let w = rng.tensor(&[n, k], -1.0, 1.0);
        let b = rng.tensor(&[n], -1.0, 1.0);
        let gop = 2.0 * (m * n * k) as f64 / 1e9;
        let tf = run(&Linear, &[x.clone(), w.clone(), b.clone()]);
        let mut line = format!("{m}x{k}->{n}: f32 {:.1} GOP/s ({:.3} ms)", gop / tf, tf * 1e3);
        for outliers in [0u32, 8] {
            let format = WeightFormat::W8A8 { outliers };
            let Ok(packed) = quant::quantize_weight(&format, w.as_f32().unwrap_or(&[]), n, k) else {
                continue;
            };
            let mut inputs = vec![x.clone()];
            inputs.extend(packed);
            inputs.push(b.clone());
            let op = QLinear {
                format,
                in_features: k,
                out_features: n,
            };
            let tq = run(&op, &inputs);
            line += &format!(", {format} {:.1} GOP/s ({:.3} ms, {:.2}x)", gop / tq, tq * 1e3, tf / tq);
            if outliers == 0 {
                // `Op::cpu` (what the criterion bench times): no prepared weight.
                let refs: Vec<&Tensor> = inputs.iter().collect();
                let tc = time(|| {
                    std::hint::black_box(op.cpu(&refs).map(|v| v.len()).unwrap_or(0));
                });
                line += &format!(" [unprepared cpu(): {:.2}x]", tf / tc);
            }
        }
        println!("{line}");
    }
}
