//! GGUF block formats against the `gguf` package (models/ggml/blocks.safetensors,
//! written by models/ggml/make_blocks.py): reference dequantization bit for
//! bit, reference quantization byte for byte; then every fast kernel against
//! the f64 product of the reference-dequantized weights, within the error
//! the 8-bit or 16-bit activation quantization allows (16 bits: also within
//! `1e-4·Σ|w·x|` per output).

use std::path::PathBuf;

use safetensors::SafeTensors;
use wginfer::error::OpError;
use wginfer::linalg::ggml::{
    dequantize_row, quantize_acts, quantize_acts16, quantize_row, ActPrecision, BlockFormat, Kernel, QActs, QActs16,
    QMatrix,
};

fn fixture() -> Vec<u8> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("models/ggml/blocks.safetensors");
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn u8s(st: &SafeTensors, name: &str) -> Vec<u8> {
    st.tensor(name)
        .unwrap_or_else(|e| panic!("{name}: {e}"))
        .data()
        .to_vec()
}

fn f32s(st: &SafeTensors, name: &str) -> Vec<f32> {
    u8s(st, name)
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect()
}

#[test]
fn dequantization_equals_gguf_bit_for_bit() {
    let bytes = fixture();
    let st = SafeTensors::deserialize(&bytes).expect("fixture");
    for format in BlockFormat::ALL {
        let blocks = u8s(&st, &format!("{}.blocks", format.name()));
        let want = f32s(&st, &format!("{}.dequant", format.name()));
        assert_eq!(blocks.len() / format.block_bytes() * format.block_len(), want.len());
        let mut got = vec![f32::NAN; want.len()];
        dequantize_row(format, &blocks, &mut got);
        for (i, (g, w)) in got.iter().zip(&want).enumerate() {
            assert!(
                g.to_bits() == w.to_bits() || (*g == 0.0 && *w == 0.0),
                "{} weight {i}: got {g}, gguf says {w}",
                format.name()
            );
        }
        assert!(
            want.iter().all(|v| v.is_finite()),
            "{}: the fixture's scales are finite",
            format.name()
        );
    }
}

#[test]
fn quantization_equals_gguf_byte_for_byte() {
    let bytes = fixture();
    let st = SafeTensors::deserialize(&bytes).expect("fixture");
    let mut checked = 0;
    for format in BlockFormat::ALL {
        let Ok(x) = st
            .tensor(&format!("{}.x", format.name()))
            .map(|_| f32s(&st, &format!("{}.x", format.name())))
        else {
            continue;
        };
        let want = u8s(&st, &format!("{}.quant", format.name()));
        let mut got = vec![0u8; want.len()];
        quantize_row(format, &x, &mut got).expect("whole blocks quantize");
        for (b, (g, w)) in got
            .chunks(format.block_bytes())
            .zip(want.chunks(format.block_bytes()))
            .enumerate()
        {
            assert_eq!(g, w, "{} block {b}", format.name());
        }
        checked += 1;
    }
    assert_eq!(
        checked, 5,
        "Q4_0, Q4_1, Q5_0, Q5_1 and Q8_0 have gguf quantizations in the fixture"
    );
    let mut out = vec![0u8; 144];
    assert!(matches!(
        quantize_row(BlockFormat::Q4_K, &[0.0; 200], &mut out),
        Err(OpError::Shape(_))
    ));
    assert!(matches!(
        quantize_row(BlockFormat::Q8_0, &[0.0; 48], &mut out[..51]),
        Err(OpError::Shape(_))
    ));
    assert!(matches!(
        quantize_row(BlockFormat::Q8_0, &[0.0; 64], &mut out[..67]),
        Err(OpError::Shape(_))
    ));
}

/// The k-quants against llama.cpp's own reference quantizers
/// (models/ggml/kquants.safetensors, written by make_kquants.py through
/// `ggml_quantize_chunk`): byte for byte on 24 blocks of each format,
/// Gaussian at three scales, one-signed, zero, constant, below llama.cpp's
/// zero threshold, an outlier, sparse, a ramp.
#[test]
fn k_quant_quantization_equals_llama_cpp_byte_for_byte() {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("models/ggml/kquants.safetensors");
    let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let st = SafeTensors::deserialize(&bytes).expect("fixture");
    for format in [BlockFormat::Q4_K, BlockFormat::Q5_K, BlockFormat::Q6_K] {
        let x = f32s(&st, &format!("{}.x", format.name()));
        let want = u8s(&st, &format!("{}.quant", format.name()));
        let mut got = vec![0u8; want.len()];
        quantize_row(format, &x, &mut got).expect("whole blocks quantize");
        let mut differ = Vec::new();
        for (b, (g, w)) in got
            .chunks(format.block_bytes())
            .zip(want.chunks(format.block_bytes()))
            .enumerate()
        {
            if g != w {
                differ.push(b);
            }
        }
        assert!(
            differ.is_empty(),
            "{}: blocks {differ:?} differ from llama.cpp's",
            format.name()
        );
        // And the quantization is close: relative RMS error of the Gaussian
        // block at scale 1 (block 1) under the reference dequantization.
        let mut y = vec![0f32; x.len()];
        dequantize_row(format, &got, &mut y);
        let (e, n) = x[256..512]
            .iter()
            .zip(&y[256..512])
            .fold((0f64, 0f64), |(e, n), (a, b)| {
                (e + f64::from(a - b).powi(2), n + f64::from(*a).powi(2))
            });
        let rel = (e / n).sqrt();
        println!("{}: relative RMS error {rel:.4} on N(0, 1)", format.name());
        assert!(rel < 0.12, "{}: relative RMS error {rel}", format.name());
    }
}

/// A small deterministic generator (xorshift) for activations.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> f32 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0
    }
}

/// A `rows × cols` matrix whose blocks are the fixture's (gguf-checked) blocks, shuffled.
fn matrix(st: &SafeTensors, format: BlockFormat, rows: usize, cols: usize) -> QMatrix {
    let blocks = u8s(st, &format!("{}.blocks", format.name()));
    let bb = format.block_bytes();
    let count = blocks.len() / bb;
    let per_row = cols / format.block_len();
    let mut data = Vec::with_capacity(rows * per_row * bb);
    for i in 0..rows * per_row {
        let k = (i * 7 + i / 3) % count;
        data.extend_from_slice(&blocks[k * bb..(k + 1) * bb]);
    }
    QMatrix::new(format, rows, cols, data).expect("whole blocks")
}

fn activations(n: usize, cols: usize, seed: u64) -> Vec<f32> {
    let mut rng = Rng(seed);
    let mut x: Vec<f32> = (0..n * cols).map(|_| rng.next()).collect();
    for (i, v) in x.iter_mut().enumerate() {
        match (i / cols) % 3 {
            1 => *v *= 30.0,
            2 if i % cols < 64 => *v = 0.0,
            _ => {}
        }
    }
    x
}

/// The f64 product of the reference-dequantized weights, per output the
/// bound `Σ_groups Σ|w|·d_x/2` the quantized activations allow (groups of
/// the format's block for 8 bits, of 32 for 16 bits; `d_x = max|x|/127` or
/// `/32767`; plus f32 accumulation, `1e-5·Σ|w·x|`), and `Σ|w·x|`.
fn reference(m: &QMatrix, x: &[f32], n: usize, precision: ActPrecision) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
    let (rows, cols) = (m.rows(), m.cols());
    let (group, levels) = match precision {
        ActPrecision::Int8 => (m.format().block_len(), 127.0),
        ActPrecision::Int16 => (32, 32767.0),
    };
    let mut w = vec![0f32; cols];
    let (mut want, mut tol, mut mags) = (vec![0f64; n * rows], vec![0f64; n * rows], vec![0f64; n * rows]);
    for r in 0..rows {
        m.dequantize_row(r, &mut w);
        for t in 0..n {
            let xt = &x[t * cols..(t + 1) * cols];
            let (mut dot, mut bound, mut mag) = (0f64, 0f64, 0f64);
            for (wb, xb) in w.chunks(group).zip(xt.chunks(group)) {
                let dx = xb.iter().fold(0f32, |a, v| a.max(v.abs())) as f64 / levels;
                let l1: f64 = wb.iter().map(|v| v.abs() as f64).sum();
                bound += l1 * dx / 2.0 * 1.001;
                for (a, b) in wb.iter().zip(xb) {
                    dot += *a as f64 * *b as f64;
                    mag += (*a as f64 * *b as f64).abs();
                }
            }
            want[t * rows + r] = dot;
            tol[t * rows + r] = bound + 1e-5 * mag + 1e-30;
            mags[t * rows + r] = mag;
        }
    }
    (want, tol, mags)
}

/// Every available kernel at `precision` for `ns` activation rows against
/// [`reference`]; returns per format the largest error / bound and error / `Σ|w·x|`.
fn check_kernels(precision: ActPrecision, ns: &[usize]) -> Vec<(f64, f64)> {
    let bytes = fixture();
    let st = SafeTensors::deserialize(&bytes).expect("fixture");
    let kernels: Vec<Kernel> = Kernel::ALL.into_iter().filter(|k| k.is_available()).collect();
    println!("kernels on this CPU: {kernels:?}");
    let mut worst_all = Vec::new();
    for format in BlockFormat::ALL {
        let (mut worst, mut worst_rel) = (vec![0f64; kernels.len()], 0f64);
        // 37 rows run on one thread; 301 rows of 1024 are split across tasks.
        for (rows, cols) in [(37, 512), (301, 1024)] {
            let m = matrix(&st, format, rows, cols);
            for &n in ns {
                let x = activations(n, cols, (rows * 1000 + n) as u64);
                let (want, tol, mag) = reference(&m, &x, n, precision);
                for (k, &kernel) in kernels.iter().enumerate() {
                    let mut got = vec![f32::NAN; n * rows];
                    m.matmul_with(kernel, precision, &x, n, &mut got);
                    for (i, ((g, w), t)) in got.iter().zip(&want).zip(&tol).enumerate() {
                        let err = (*g as f64 - w).abs();
                        worst[k] = worst[k].max(err / t);
                        worst_rel = worst_rel.max(err / (mag[i] + 1e-30));
                        assert!(
                            err <= *t,
                            "{} {kernel:?} {precision:?} {rows}x{cols} n={n} out {i}: got {g}, want {w} (error {err:e} > bound {t:e})",
                            format.name()
                        );
                    }
                }
            }
        }
        println!(
            "{} {precision:?}: largest error / bound per kernel {worst:.3?}, largest error / Σ|w·x| {worst_rel:.2e}",
            format.name()
        );
        worst_all.push((worst.iter().fold(0f64, |a, &b| a.max(b)), worst_rel));
    }
    worst_all
}

#[test]
fn every_kernel_matches_the_reference_within_the_activation_rounding() {
    check_kernels(ActPrecision::Int8, &[1, 3, 17]);
}

#[test]
fn sixteen_bit_activations_are_within_1e_4_of_the_f64_product() {
    for (format, (_, rel)) in BlockFormat::ALL
        .into_iter()
        .zip(check_kernels(ActPrecision::Int16, &[1, 3, 7, 17]))
    {
        assert!(rel <= 1e-4, "{}: error / Σ|w·x| {rel:e}", format.name());
    }
}

#[test]
fn matmul_uses_16_bit_activations_up_to_7_rows_and_8_bits_beyond() {
    let bytes = fixture();
    let st = SafeTensors::deserialize(&bytes).expect("fixture");
    let m = matrix(&st, BlockFormat::Q4_1, 40, 512);
    for (n, precision) in [
        (1, ActPrecision::Int16),
        (7, ActPrecision::Int16),
        (8, ActPrecision::Int8),
    ] {
        assert_eq!(ActPrecision::for_rows(n), precision);
        let x = activations(n, 512, 3);
        let (mut a, mut b) = (vec![0f32; n * 40], vec![0f32; n * 40]);
        m.matmul(&x, n, &mut a);
        m.matmul_with(Kernel::best(), precision, &x, n, &mut b);
        assert_eq!(a, b, "n = {n}");
    }
}

#[test]
fn kernels_agree_with_each_other_closely() {
    let bytes = fixture();
    let st = SafeTensors::deserialize(&bytes).expect("fixture");
    if !Kernel::Avx2.is_available() {
        println!("SKIPPED: this CPU has no AVX2; only the portable kernel runs");
        return;
    }
    for format in BlockFormat::ALL {
        let m = matrix(&st, format, 45, 768);
        let x = activations(5, 768, 99);
        for precision in [ActPrecision::Int8, ActPrecision::Int16] {
            let (mut a, mut b) = (vec![0f32; 5 * 45], vec![0f32; 5 * 45]);
            m.matmul_with(Kernel::Portable, precision, &x, 5, &mut a);
            m.matmul_with(Kernel::Avx2, precision, &x, 5, &mut b);
            // Same integer block sums; only the f32 accumulation order differs.
            let (_, _, mag) = reference(&m, &x, 5, precision);
            for (i, (p, v)) in a.iter().zip(&b).enumerate() {
                assert!(
                    ((p - v).abs() as f64) <= 1e-5 * mag[i] + 1e-30,
                    "{} {precision:?} out {i}: portable {p}, avx2 {v}",
                    format.name()
                );
            }
        }
    }
}

#[test]
fn quantized_activations_are_reused_and_nan_propagates() {
    let bytes = fixture();
    let st = SafeTensors::deserialize(&bytes).expect("fixture");
    for format in [BlockFormat::Q4_1, BlockFormat::Q6_K] {
        let m = matrix(&st, format, 9, 512);
        let mut x = activations(2, 512, 5);
        let mut acts = QActs::default();
        quantize_acts(&x, 2, 512, format.block_len(), &mut acts);
        let mut acts16 = QActs16::default();
        quantize_acts16(&x, 2, 512, &mut acts16);
        let (mut a, mut b) = (vec![0f32; 18], vec![0f32; 18]);
        m.matmul_acts(Kernel::best(), &acts, &mut a);
        m.matmul_with(Kernel::best(), ActPrecision::Int8, &x, 2, &mut b);
        assert_eq!(a, b);
        m.matmul_acts16(Kernel::best(), &acts16, &mut a);
        m.matmul(&x, 2, &mut b);
        assert_eq!(a, b);
        x[600] = f32::NAN;
        for kernel in Kernel::ALL.into_iter().filter(|k| k.is_available()) {
            for precision in [ActPrecision::Int8, ActPrecision::Int16] {
                m.matmul_with(kernel, precision, &x, 2, &mut b);
                assert!(
                    b[..9].iter().all(|v| v.is_finite()) && b[9..].iter().all(|v| v.is_nan()),
                    "{kernel:?} {precision:?}: {b:?}"
                );
            }
        }
    }
}

#[test]
fn qmatrix_rejects_partial_blocks_and_wrong_sizes() {
    assert!(QMatrix::new(BlockFormat::Q4_0, 2, 33, vec![0; 40]).is_err());
    assert!(QMatrix::new(BlockFormat::Q4_0, 2, 32, vec![0; 35]).is_err());
    assert!(QMatrix::new(BlockFormat::Q6_K, 1, 256, vec![0; 210]).is_ok());
    assert!(QMatrix::new(BlockFormat::Q6_K, usize::MAX, 256, vec![0; 210]).is_err());
}
