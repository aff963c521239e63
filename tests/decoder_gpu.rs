//! The GPU decoder against a plain-loop f32 forward pass written here (every
//! matrix dequantized with `linalg::ggml::dequantize_row`, attention over the
//! whole prefix recomputed at each position): small random decoders in every
//! weight format the GPU reads, prefill then single-token steps, truncation,
//! and the errors (context overflow, token id, adapter limits). Then the
//! committed random-weight GGUF decoders (models/decoders) against their numpy
//! reference logits and the CPU decoder, and SmolLM2 (`WGINFER_SMOLLM2_GGUF`)
//! against the CPU decoder.
//!
//! GPU tests run on the first adapter wgpu lists (`WGINFER_TEST_ADAPTER`
//! overrides); without one they print SKIPPED, and fail under
//! `WGINFER_REQUIRE_GPU=1`.

mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use half::f16;

use wginfer::backend::gpu::GpuContext;
use wginfer::error::{GenerateError, GpuError};
use wginfer::generate::cache::KvDtype;
use wginfer::generate::cpu::CpuDecoder;
use wginfer::generate::gpu::{GpuDecoder, GpuSeq};
use wginfer::generate::{load, Decoder, DecoderConfig, DecoderWeights, LayerWeights, Logits, Matrix, RopeLayout};
use wginfer::linalg::ggml::{BlockFormat, QMatrix};
use wginfer::model::gguf::GgufFile;

/// splitmix64: deterministic test data without a dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in [-1, 1).
    fn unit(&mut self) -> f32 {
        (self.next() >> 40) as f32 / (1u64 << 23) as f32 - 1.0
    }

    fn byte(&mut self) -> u8 {
        self.next() as u8
    }
}

/// The weight format of a test decoder's matrices.
#[derive(Clone, Copy, Debug)]
enum Fmt {
    F32,
    F16,
    Block(BlockFormat),
}

fn half(rng: &mut Rng, scale: f32) -> [u8; 2] {
    f16::from_f32(rng.unit() * scale).to_le_bytes()
}

/// Random valid blocks: finite f16 scales of about `amp / range of q`.
fn random_blocks(rng: &mut Rng, format: BlockFormat, blocks: usize, amp: f32) -> Vec<u8> {
    let mut out = Vec::with_capacity(blocks * format.block_bytes());
    if format.block_len() == 256 {
        for _ in 0..blocks {
            let mut b: Vec<u8> = (0..format.block_bytes()).map(|_| rng.byte()).collect();
            let fields: &[(usize, f32)] = match format {
                BlockFormat::Q6_K => &[(208, amp / 2000.0)],
                _ => &[(0, amp / 300.0), (2, amp / 40.0)],
            };
            for &(at, scale) in fields {
                b[at..at + 2].copy_from_slice(&half(rng, scale));
            }
            out.extend(b);
        }
        return out;
    }
    for _ in 0..blocks {
        let start = out.len();
        let (d, m) = match format {
            BlockFormat::Q4_0 | BlockFormat::Q4_1 => (amp / 8.0, amp),
            BlockFormat::Q5_0 | BlockFormat::Q5_1 => (amp / 16.0, amp),
            _ => (amp / 128.0, 0.0),
        };
        out.extend(half(rng, d));
        if matches!(format, BlockFormat::Q4_1 | BlockFormat::Q5_1) {
            out.extend(half(rng, m));
        }
        while out.len() < start + format.block_bytes() {
            out.push(rng.byte());
        }
    }
    out
}

fn random_matrix(rng: &mut Rng, fmt: Fmt, rows: usize, cols: usize) -> Matrix {
    let amp = 1.5 / (cols as f32).sqrt();
    match fmt {
        Fmt::F32 => Matrix::F32 {
            rows,
            cols,
            data: (0..rows * cols).map(|_| rng.unit() * amp).collect(),
        },
        Fmt::F16 => Matrix::F16 {
            rows,
            cols,
            data: (0..rows * cols).map(|_| f16::from_f32(rng.unit() * amp)).collect(),
        },
        Fmt::Block(f) => {
            let data = random_blocks(rng, f, rows * cols / f.block_len(), amp);
            Matrix::Quant(QMatrix::new(f, rows, cols, data).expect("whole blocks"))
        }
    }
}

fn config(d: usize, layout: RopeLayout) -> DecoderConfig {
    DecoderConfig {
        architecture: "llama".into(),
        vocab: 300,
        d_model: d,
        n_layers: 2,
        n_heads: 4,
        n_kv_heads: 2,
        head_dim: d / 4,
        ffn: 2 * d,
        rope_theta: 10000.0,
        rope_scaling: Default::default(),
        rope_dims: d / 4,
        rope_layout: layout,
        norm_eps: 1e-5,
        trained_context: 64,
    }
}

/// A random decoder: `embed` for the embedding, `fmt` for every other
/// matrix; `qwen` adds QKV biases and a separate head.
fn random_decoder(c: DecoderConfig, fmt: Fmt, embed: Fmt, qwen: bool, seed: u64) -> DecoderWeights {
    let rng = &mut Rng(seed);
    let (d, qd, kvd, ffn) = (c.d_model, c.q_dim(), c.kv_dim(), c.ffn);
    let vec =
        |rng: &mut Rng, n: usize, base: f32, amp: f32| (0..n).map(|_| base + amp * rng.unit()).collect::<Vec<_>>();
    let layers = (0..c.n_layers)
        .map(|_| LayerWeights {
            attn_norm: vec(rng, d, 1.0, 0.2),
            wq: random_matrix(rng, fmt, qd, d),
            wk: random_matrix(rng, fmt, kvd, d),
            wv: random_matrix(rng, fmt, kvd, d),
            bq: qwen.then(|| vec(rng, qd, 0.0, 0.3)),
            bk: qwen.then(|| vec(rng, kvd, 0.0, 0.3)),
            bv: qwen.then(|| vec(rng, kvd, 0.0, 0.3)),
            wo: random_matrix(rng, fmt, d, qd),
            ffn_norm: vec(rng, d, 1.0, 0.2),
            w_gate: random_matrix(rng, fmt, ffn, d),
            w_up: random_matrix(rng, fmt, ffn, d),
            w_down: random_matrix(rng, fmt, d, ffn),
        })
        .collect();
    let embed_m = random_matrix(rng, embed, c.vocab, d);
    let output = qwen.then(|| random_matrix(rng, fmt, c.vocab, d));
    DecoderWeights {
        norm: vec(rng, d, 1.0, 0.2),
        config: c,
        embed: embed_m,
        layers,
        output,
    }
}

/// A matrix as f32 rows, through the library's reference dequantization
/// (checked against the `gguf` package in tests/ggml_blocks.rs).
fn dense(m: &Matrix) -> Vec<f32> {
    let cols = m.cols();
    let mut out = vec![0f32; m.rows() * cols];
    for (r, row) in out.chunks_exact_mut(cols).enumerate() {
        m.dequantize_row(r, row);
    }
    out
}

/// `W·x` for a dense `rows × cols` W.
fn matvec(w: &[f32], x: &[f32]) -> Vec<f32> {
    w.chunks_exact(x.len())
        .map(|row| row.iter().zip(x).map(|(a, b)| (*a as f64) * (*b as f64)).sum::<f64>() as f32)
        .collect()
}

fn rms_norm(x: &[f32], w: &[f32], eps: f32) -> Vec<f32> {
    let ms = x.iter().map(|v| (*v as f64) * (*v as f64)).sum::<f64>() / x.len() as f64;
    let inv = 1.0 / (ms + eps as f64).sqrt();
    x.iter().zip(w).map(|(v, g)| (*v as f64 * inv) as f32 * g).collect()
}

fn rope(v: &mut [f32], heads: usize, c: &DecoderConfig, pos: usize) {
    let half = c.rope_dims / 2;
    for h in 0..heads {
        let head = &mut v[h * c.head_dim..(h + 1) * c.head_dim];
        for i in 0..half {
            let (a, b) = match c.rope_layout {
                RopeLayout::Adjacent => (2 * i, 2 * i + 1),
                RopeLayout::Halves => (i, i + half),
            };
            let angle = pos as f64 * (c.rope_theta as f64).powf(-2.0 * i as f64 / c.rope_dims as f64);
            let (s, co) = angle.sin_cos();
            let (x0, x1) = (head[a] as f64, head[b] as f64);
            head[a] = (x0 * co - x1 * s) as f32;
            head[b] = (x0 * s + x1 * co) as f32;
        }
    }
}

fn add(a: &mut [f32], b: Option<&Vec<f32>>) {
    if let Some(b) = b {
        a.iter_mut().zip(b).for_each(|(x, y)| *x += y);
    }
}

/// Logits of every position of `tokens`, recomputed from scratch.
fn reference(w: &DecoderWeights, tokens: &[u32]) -> Vec<Vec<f32>> {
    reference_kv(w, tokens, false)
}

/// As [`reference`]; with `kv16`, every key (after bias and RoPE) and value
/// (after bias) rounded to f16, as an f16 cache stores them.
fn reference_kv(w: &DecoderWeights, tokens: &[u32], kv16: bool) -> Vec<Vec<f32>> {
    let round = |v: &mut Vec<f32>| {
        if kv16 {
            v.iter_mut().for_each(|x| *x = f16::from_f32(*x).to_f32());
        }
    };
    let c = &w.config;
    let (hd, group) = (c.head_dim, c.n_heads / c.n_kv_heads);
    let embed = dense(&w.embed);
    let mut xs: Vec<Vec<f32>> = tokens
        .iter()
        .map(|&t| embed[t as usize * c.d_model..][..c.d_model].to_vec())
        .collect();
    for l in &w.layers {
        let [wq, wk, wv, wo, wg, wu, wd] = [&l.wq, &l.wk, &l.wv, &l.wo, &l.w_gate, &l.w_up, &l.w_down].map(dense);
        let mut qs = Vec::new();
        let mut ks = Vec::new();
        let mut vs = Vec::new();
        for (pos, x) in xs.iter().enumerate() {
            let xn = rms_norm(x, &l.attn_norm, c.norm_eps);
            let (mut q, mut k, mut v) = (matvec(&wq, &xn), matvec(&wk, &xn), matvec(&wv, &xn));
            add(&mut q, l.bq.as_ref());
            add(&mut k, l.bk.as_ref());
            add(&mut v, l.bv.as_ref());
            rope(&mut q, c.n_heads, c, pos);
            rope(&mut k, c.n_kv_heads, c, pos);
            round(&mut k);
            round(&mut v);
            qs.push(q);
            ks.push(k);
            vs.push(v);
        }
        for (pos, x) in xs.iter_mut().enumerate() {
            let mut att = vec![0f32; c.q_dim()];
            for h in 0..c.n_heads {
                let kvo = (h / group) * hd;
                let q = &qs[pos][h * hd..(h + 1) * hd];
                let scores: Vec<f64> = (0..=pos)
                    .map(|j| {
                        let k = &ks[j][kvo..kvo + hd];
                        q.iter().zip(k).map(|(a, b)| (*a as f64) * (*b as f64)).sum::<f64>() / (hd as f64).sqrt()
                    })
                    .collect();
                let mx = scores.iter().cloned().fold(f64::MIN, f64::max);
                let e: Vec<f64> = scores.iter().map(|s| (s - mx).exp()).collect();
                let sum: f64 = e.iter().sum();
                for i in 0..hd {
                    let o: f64 = (0..=pos).map(|j| e[j] * vs[j][kvo + i] as f64).sum();
                    att[h * hd + i] = (o / sum) as f32;
                }
            }
            add(x, Some(&matvec(&wo, &att)));
            let xn = rms_norm(x, &l.ffn_norm, c.norm_eps);
            let (g, u) = (matvec(&wg, &xn), matvec(&wu, &xn));
            let h: Vec<f32> = g
                .iter()
                .zip(&u)
                .map(|(g, u)| (*g as f64 / (1.0 + (-*g as f64).exp())) as f32 * u)
                .collect();
            add(x, Some(&matvec(&wd, &h)));
        }
    }
    let head = dense(w.head());
    xs.iter()
        .map(|x| matvec(&head, &rms_norm(x, &w.norm, c.norm_eps)))
        .collect()
}

/// `|got - want| <= rtol·max|want|` element by element.
fn assert_logits(got: &[f32], want: &[f32], rtol: f32, what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    let scale = want.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-3);
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!(
            (g - w).abs() <= rtol * scale,
            "{what}: logit {i}: got {g}, want {w} (|diff| {:.3e} > {rtol:.0e}·{scale:.3})",
            (g - w).abs()
        );
    }
}

fn tokens(n: usize, seed: u64) -> Vec<u32> {
    let mut rng = Rng(seed);
    (0..n).map(|_| (rng.next() % 300) as u32).collect()
}

/// Prefill of 5 tokens, 3 single-token steps, truncation to 3 and a re-run
/// of the rest as one pass, each against the reference.
fn check_decoder(w: &DecoderWeights, what: &str) {
    check_decoder_kv(w, what, KvDtype::F32);
}

/// [`check_decoder`] with the cache holding `kv` values, against the
/// reference that rounds keys and values as that cache does.
fn check_decoder_kv(w: &DecoderWeights, what: &str, kv: KvDtype) {
    let Some(choice) = common::minilm::gpu_choice() else {
        return;
    };
    let ids = tokens(8, 7);
    let want = reference_kv(w, &ids, kv == KvDtype::F16);
    let mut dec = GpuDecoder::with_kv_dtype(w, 16, &choice, kv).unwrap_or_else(|e| panic!("{what}: {e}"));
    assert_eq!(dec.kv_dtype(), kv);
    let vocab = w.config.vocab;
    let all = dec.forward(&ids[..5], Logits::All).expect("prefill");
    for p in 0..5 {
        assert_logits(
            &all[p * vocab..(p + 1) * vocab],
            &want[p],
            1e-3,
            &format!("{what}: prefill position {p}"),
        );
    }
    for p in 5..8 {
        let got = dec.forward(&ids[p..p + 1], Logits::Last).expect("step");
        assert_logits(&got, &want[p], 1e-3, &format!("{what}: step at position {p}"));
    }
    assert_eq!(dec.cached(), 8);
    dec.truncate(3);
    assert_eq!(dec.cached(), 3);
    let last = dec.forward(&ids[3..8], Logits::Last).expect("re-run");
    assert_logits(&last, &want[7], 1e-3, &format!("{what}: after truncate"));
}

#[test]
fn f32_and_f16_decoders_match_the_reference() {
    let c = config(64, RopeLayout::Adjacent);
    check_decoder(&random_decoder(c.clone(), Fmt::F32, Fmt::F32, false, 1), "f32");
    check_decoder(&random_decoder(c, Fmt::F16, Fmt::F16, false, 2), "f16");
}

#[test]
fn block_format_decoders_match_the_reference() {
    let c = config(128, RopeLayout::Adjacent);
    for (i, f) in [
        BlockFormat::Q4_0,
        BlockFormat::Q4_1,
        BlockFormat::Q5_0,
        BlockFormat::Q5_1,
        BlockFormat::Q8_0,
    ]
    .into_iter()
    .enumerate()
    {
        let w = random_decoder(
            c.clone(),
            Fmt::Block(f),
            Fmt::Block(BlockFormat::Q8_0),
            false,
            10 + i as u64,
        );
        check_decoder(&w, f.name());
    }
}

#[test]
fn qwen2_shape_with_biases_halves_rope_and_a_separate_head() {
    let c = config(128, RopeLayout::Halves);
    let w = random_decoder(c, Fmt::Block(BlockFormat::Q4_1), Fmt::F16, true, 21);
    check_decoder(&w, "qwen2-like Q4_1");
}

/// The f16 cache: llama (adjacent RoPE, f32 and Q8_0 weights) and qwen2
/// (biases, halves RoPE) against the reference with f16-rounded keys and
/// values, and nearer that reference than the f32 one.
#[test]
fn f16_cache_matches_the_rounded_reference() {
    let llama = random_decoder(config(64, RopeLayout::Adjacent), Fmt::F32, Fmt::F32, false, 1);
    check_decoder_kv(&llama, "f32 weights, f16 cache", KvDtype::F16);
    let q8 = random_decoder(
        config(128, RopeLayout::Adjacent),
        Fmt::Block(BlockFormat::Q8_0),
        Fmt::Block(BlockFormat::Q8_0),
        false,
        14,
    );
    check_decoder_kv(&q8, "Q8_0, f16 cache", KvDtype::F16);
    let qwen = random_decoder(
        config(128, RopeLayout::Halves),
        Fmt::Block(BlockFormat::Q4_1),
        Fmt::F16,
        true,
        21,
    );
    check_decoder_kv(&qwen, "qwen2-like Q4_1, f16 cache", KvDtype::F16);
    // The GPU's f16 logits sit near the rounded reference, not the f32 one.
    let Some(choice) = common::minilm::gpu_choice() else {
        return;
    };
    let ids = tokens(8, 7);
    let mut dec = GpuDecoder::with_kv_dtype(&llama, 16, &choice, KvDtype::F16).expect("f16 cache");
    let got = dec.forward(&ids, Logits::All).expect("forward");
    let dist = |want: &[Vec<f32>]| {
        got.iter()
            .zip(want.concat())
            .fold(0f32, |m, (g, w)| m.max((g - w).abs()))
    };
    let (to16, to32) = (
        dist(&reference_kv(&llama, &ids, true)),
        dist(&reference_kv(&llama, &ids, false)),
    );
    println!("f16 cache: max |diff| {to16:.2e} to the rounded reference, {to32:.2e} to the f32 one");
    assert!(
        to16 * 4.0 < to32,
        "f16 cache: {to16:e} to the rounded reference, {to32:e} to the f32 one"
    );
}

/// Three sequences on a three-slot cache (slots given out of order): their
/// prompts in one pass, then decoding steps of all three together, then a
/// step of one alone; every logit against the reference of that sequence
/// alone, with the f32 and the f16 cache.
#[test]
fn sequences_share_a_pass_each_on_its_own_slot() {
    let Some(choice) = common::minilm::gpu_choice() else {
        return;
    };
    let w = random_decoder(
        config(128, RopeLayout::Halves),
        Fmt::Block(BlockFormat::Q4_1),
        Fmt::F16,
        true,
        31,
    );
    let vocab = w.config.vocab;
    let seqs: Vec<Vec<u32>> = (0..3).map(|i| tokens(6 + 2 * i, 40 + i as u64)).collect();
    let prompts = [3usize, 5, 2];
    let slots = [2usize, 0, 1];
    for kv in [KvDtype::F32, KvDtype::F16] {
        let want: Vec<Vec<Vec<f32>>> = seqs.iter().map(|s| reference_kv(&w, s, kv == KvDtype::F16)).collect();
        let mut dec = GpuDecoder::with_slots(&w, 16, &choice, kv, 3).expect("three slots");
        assert_eq!(dec.slots(), 3);
        let first: Vec<GpuSeq> = (0..3)
            .map(|i| GpuSeq {
                slot: slots[i],
                pos0: 0,
                tokens: &seqs[i][..prompts[i]],
                logits: Logits::All,
            })
            .collect();
        let got = dec.forward_seqs(&first).expect("prompts");
        for (i, g) in got.iter().enumerate() {
            assert_eq!(g.len(), prompts[i] * vocab);
            for p in 0..prompts[i] {
                let what = format!("{kv:?}: sequence {i}, prompt position {p}");
                assert_logits(&g[p * vocab..(p + 1) * vocab], &want[i][p], 1e-3, &what);
            }
        }
        let mut pos = prompts;
        for _ in 0..2 {
            let step: Vec<GpuSeq> = (0..3)
                .map(|i| GpuSeq {
                    slot: slots[i],
                    pos0: pos[i],
                    tokens: &seqs[i][pos[i]..pos[i] + 1],
                    logits: Logits::Last,
                })
                .collect();
            let got = dec.forward_seqs(&step).expect("step");
            for i in 0..3 {
                let what = format!("{kv:?}: sequence {i}, step at position {}", pos[i]);
                assert_logits(&got[i], &want[i][pos[i]], 1e-3, &what);
                pos[i] += 1;
            }
        }
        let alone = GpuSeq {
            slot: slots[2],
            pos0: pos[2],
            tokens: &seqs[2][pos[2]..],
            logits: Logits::Last,
        };
        let got = dec.forward_seqs(&[alone]).expect("alone");
        let last = seqs[2].len() - 1;
        assert_logits(&got[0], &want[2][last], 1e-3, &format!("{kv:?}: sequence 2 alone"));
        let twice = [alone, alone];
        match dec.forward_seqs(&twice) {
            Err(GenerateError::Config { key, .. }) => assert_eq!(key, "slot"),
            other => panic!("a slot given twice gave {:?}", other.map(|_| ())),
        }
        let past = GpuSeq { slot: 3, ..alone };
        match dec.forward_seqs(&[past]) {
            Err(GenerateError::Config { key, .. }) => assert_eq!(key, "slot"),
            other => panic!("slot 3 of 3 gave {:?}", other.map(|_| ())),
        }
    }
}

#[test]
fn long_prompt_runs_in_several_passes_and_keeps_the_cache() {
    let Some(choice) = common::minilm::gpu_choice() else {
        return;
    };
    let w = random_decoder(
        config(64, RopeLayout::Adjacent),
        Fmt::Block(BlockFormat::Q4_0),
        Fmt::F32,
        false,
        5,
    );
    let ids = tokens(40, 3);
    let want = reference(&w, &ids);
    let ctx = GpuContext::shared(&choice).expect("context");
    let mut dec = GpuDecoder::with_batch(ctx, &w, 48, 16).expect("decoder");
    assert_eq!(dec.batch(), 16);
    let all = dec.forward(&ids[..37], Logits::All).expect("prompt");
    for p in [0, 16, 17, 36] {
        assert_logits(
            &all[p * 300..(p + 1) * 300],
            &want[p],
            1e-3,
            &format!("prompt position {p}"),
        );
    }
    let got = dec.forward(&ids[37..40], Logits::Last).expect("three more");
    assert_logits(&got, &want[39], 1e-3, "three tokens after the prompt");
}

#[test]
fn errors_are_typed() {
    let Some(choice) = common::minilm::gpu_choice() else {
        return;
    };
    let w = random_decoder(config(64, RopeLayout::Adjacent), Fmt::F32, Fmt::F32, false, 9);
    let mut dec = GpuDecoder::new(&w, 6, &choice).expect("decoder");
    dec.forward(&tokens(4, 1), Logits::Last).expect("fits");
    match dec.forward(&tokens(3, 2), Logits::Last) {
        Err(GenerateError::Context { needed: 7, context: 6 }) => {}
        other => panic!("context overflow gave {other:?}"),
    }
    assert_eq!(dec.cached(), 4, "a refused pass leaves the cache as it was");
    match dec.forward(&[300], Logits::Last) {
        Err(GenerateError::TokenId { id: 300, vocab: 300 }) => {}
        other => panic!("token 300 gave {other:?}"),
    }
    match GpuDecoder::new(&w, 0, &choice) {
        Err(GenerateError::Config { key, .. }) => assert_eq!(key, "context"),
        other => panic!("context 0 gave {:?}", other.map(|_| ())),
    }
    let mut odd = config(60, RopeLayout::Adjacent);
    odd.head_dim = 15;
    odd.rope_dims = 14;
    let odd = random_decoder(odd, Fmt::F32, Fmt::F32, false, 3);
    match GpuDecoder::with_kv_dtype(&odd, 8, &choice, KvDtype::F16) {
        Err(GenerateError::Config { key, message }) => {
            assert!(key == "head_dim" && message.contains("odd"), "{message}")
        }
        other => panic!("an f16 cache with head dim 15 gave {:?}", other.map(|_| ())),
    }
    // A cache past one storage binding of the adapter.
    let ctx = GpuContext::shared(&choice).expect("context");
    let limit = ctx
        .limits()
        .max_storage_buffer_binding_size
        .min(ctx.limits().max_buffer_size);
    let context = (limit / (w.config.kv_dim() as u64 * 4) + 1) as usize;
    if context as u64 * 256 <= u64::from(u32::MAX) {
        match GpuDecoder::new(&w, context, &choice) {
            Err(GenerateError::Gpu(GpuError::TooLarge { .. })) => {}
            other => panic!("a context of {context} gave {:?}", other.map(|_| ())),
        }
    }
}

#[test]
fn kquant_decoders_match_the_reference() {
    let c = config(256, RopeLayout::Adjacent);
    for (i, f) in [BlockFormat::Q4_K, BlockFormat::Q5_K, BlockFormat::Q6_K]
        .into_iter()
        .enumerate()
    {
        let w = random_decoder(c.clone(), Fmt::Block(f), Fmt::Block(f), false, 30 + i as u64);
        check_decoder(&w, f.name());
    }
}

fn load_weights(path: &Path) -> Arc<DecoderWeights> {
    let file = GgufFile::open(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    Arc::new(load::from_gguf(&file).unwrap_or_else(|e| panic!("{}: {e}", path.display())))
}

/// GPU against CPU on `tokens`: one pass with every position's logits near
/// the CPU decoder's (mean KL <= 1e-5, top-1 >= 95%: both compute the f32
/// product of the dequantized weights, the CPU with f32 GEMM for prompts of 8
/// tokens or more and 16-bit activation blocks below); then half as a
/// prompt and the rest one token at a time, within 1e-3 of the one pass.
/// Returns the one-pass logits.
fn gpu_against_cpu(w: &Arc<DecoderWeights>, tokens: &[u32], choice: &wginfer::AdapterChoice, what: &str) -> Vec<f32> {
    gpu_against_cpu_kv(w, tokens, choice, what, KvDtype::F32)
}

/// [`gpu_against_cpu`] with both caches holding `kv` values.
fn gpu_against_cpu_kv(
    w: &Arc<DecoderWeights>,
    tokens: &[u32],
    choice: &wginfer::AdapterChoice,
    what: &str,
    kv: KvDtype,
) -> Vec<f32> {
    let vocab = w.config.vocab;
    let t = tokens.len();
    let mut cpu = CpuDecoder::with_kv_dtype(w.clone(), t, kv).expect("cpu decoder");
    let want = cpu.forward(tokens, Logits::All).expect("cpu forward");
    let mut gpu = GpuDecoder::with_kv_dtype(w, t, choice, kv).unwrap_or_else(|e| panic!("{what}: {e}"));
    let all = gpu.forward(tokens, Logits::All).expect("gpu forward");
    let (kl, top1) = common::kl_top1(&want, &all, vocab);
    println!("gpu vs cpu {what}: mean KL {kl:.2e}, top-1 {:.1}%", 100.0 * top1);
    assert!(kl <= 1e-5, "{what}: mean KL {kl} > 1e-5 against the CPU decoder");
    assert!(
        top1 >= 0.95,
        "{what}: top-1 agreement {top1} < 95% against the CPU decoder"
    );
    gpu.truncate(0);
    let half = t / 2;
    let mut stepped = gpu.forward(&tokens[..half], Logits::All).expect("prompt");
    for &tok in &tokens[half..] {
        stepped.extend(gpu.forward(&[tok], Logits::Last).expect("step"));
    }
    for p in 0..t {
        let r = p * vocab..(p + 1) * vocab;
        assert_logits(
            &stepped[r.clone()],
            &all[r],
            1e-3,
            &format!("{what}: stepped, position {p}"),
        );
    }
    all
}

/// The committed random-weight GGUF decoders (llama in Q4_0/Q5_0/Q5_1/Q8_0
/// with a separate head, qwen2 with biases in Q4_K/Q5_K/Q6_K, tied): every
/// logit within 1e-3·max|logit| of the numpy f32 forward pass over the `gguf`
/// package's dequantized weights.
#[test]
fn committed_gguf_decoders_match_numpy_and_the_cpu() {
    let Some(choice) = common::minilm::gpu_choice() else {
        return;
    };
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("models/decoders");
    for dir in ["ref-llama-q", "ref-qwen2-k"] {
        let dir = root.join(dir);
        let mut cases: Vec<PathBuf> = std::fs::read_dir(&dir)
            .expect("reference directory")
            .map(|e| e.expect("entry").path())
            .filter(|p| p.extension().is_some_and(|x| x == "json"))
            .collect();
        cases.sort();
        assert!(!cases.is_empty(), "no cases in {}", dir.display());
        for json in cases {
            let meta: serde_json::Value = serde_json::from_slice(&std::fs::read(&json).expect("json")).expect("json");
            let gguf = Path::new(env!("CARGO_MANIFEST_DIR")).join(meta["gguf"].as_str().expect("gguf path"));
            let tokens: Vec<u32> = meta["tokens"]
                .as_array()
                .expect("tokens")
                .iter()
                .map(|t| t.as_u64().expect("id") as u32)
                .collect();
            let npy = json.with_extension("logits.npy");
            let reference = wginfer::tensor::read_npy(&std::fs::read(&npy).expect("npy")).expect("npy");
            let w = load_weights(&gguf);
            let what = json.display().to_string();
            let all = gpu_against_cpu(&w, &tokens, &choice, &what);
            let reference = reference.as_f32().expect("f32");
            let vocab = w.config.vocab;
            let (kl, top1) = common::kl_top1(reference, &all, vocab);
            println!("gpu vs numpy {what}: mean KL {kl:.2e}, top-1 {:.1}%", 100.0 * top1);
            for (p, (g, r)) in all.chunks_exact(vocab).zip(reference.chunks_exact(vocab)).enumerate() {
                assert_logits(g, r, 1e-3, &format!("{what}: position {p} against numpy"));
            }
        }
    }
}

/// SmolLM2-135M-Instruct (Q4_1, Q8_0 tied embedding): GPU against CPU on a
/// short token sequence, with an f32 and an f16 cache.
#[test]
fn smollm2_gpu_matches_the_cpu() {
    let Some(path) = std::env::var_os("WGINFER_SMOLLM2_GGUF") else {
        common::skip("WGINFER_SMOLLM2_GGUF is not set");
        return;
    };
    let Some(choice) = common::minilm::gpu_choice() else {
        return;
    };
    let w = load_weights(Path::new(&path));
    let tokens = [1, 9690, 198, 2683, 359, 253, 5356, 5646, 28, 7018, 411, 2];
    gpu_against_cpu(&w, &tokens, &choice, "SmolLM2");
    gpu_against_cpu_kv(&w, &tokens, &choice, "SmolLM2, f16 cache", KvDtype::F16);
}

/// Both params structs have the size and member offsets naga gives the WGSL.
#[test]
fn params_structs_match_the_wgsl_layout() {
    for (file, size, members) in wginfer::generate::gpu::params_layouts() {
        let src = wginfer::generate::gpu::SHADERS
            .iter()
            .find(|(f, _)| *f == file)
            .map(|(_, s)| *s)
            .expect("a decoder shader");
        let module = naga::front::wgsl::parse_str(src).unwrap_or_else(|e| panic!("{file}: {}", e.emit_to_string(src)));
        let (_, ty) = module
            .types
            .iter()
            .find(|(_, t)| t.name.as_deref() == Some("Params"))
            .unwrap_or_else(|| panic!("{file} has no struct Params"));
        let naga::TypeInner::Struct { members: wgsl, span } = &ty.inner else {
            panic!("{file}: Params is not a struct");
        };
        let wgsl: Vec<(String, usize)> = wgsl
            .iter()
            .map(|m| (m.name.clone().unwrap_or_default(), m.offset as usize))
            .collect();
        let rust: Vec<(String, usize)> = members.iter().map(|&(n, o)| (n.to_string(), o)).collect();
        assert_eq!(rust, wgsl, "{file}: members and offsets");
        assert_eq!(size, *span as usize, "{file}: size");
    }
}

/// Decode speed of a SmolLM2-135M-shaped random Q4_1 decoder (Q8_0
/// embedding, tied head): `cargo test --release --test decoder_gpu -- --ignored --nocapture`.
#[test]
#[ignore = "a measurement, run by hand in release"]
fn decode_speed_smollm2_shape() {
    let Some(choice) = common::minilm::gpu_choice() else {
        return;
    };
    let c = DecoderConfig {
        architecture: "llama".into(),
        vocab: 49152,
        d_model: 576,
        n_layers: 30,
        n_heads: 9,
        n_kv_heads: 3,
        head_dim: 64,
        ffn: 1536,
        rope_theta: 100000.0,
        rope_scaling: Default::default(),
        rope_dims: 64,
        rope_layout: RopeLayout::Adjacent,
        norm_eps: 1e-5,
        trained_context: 8192,
    };
    let w = random_decoder(
        c,
        Fmt::Block(BlockFormat::Q4_1),
        Fmt::Block(BlockFormat::Q8_0),
        false,
        1,
    );
    let mut dec = GpuDecoder::new(&w, 256, &choice).expect("decoder");
    let prompt = tokens(32, 5);
    let t = std::time::Instant::now();
    dec.forward(&prompt, Logits::Last).expect("prompt");
    let pp = prompt.len() as f64 / t.elapsed().as_secs_f64();
    let steps = 8;
    let t = std::time::Instant::now();
    let mut next = 1u32;
    for _ in 0..steps {
        let l = dec.forward(&[next], Logits::Last).expect("step");
        next = (l
            .iter()
            .enumerate()
            .fold((0, f32::MIN), |b, (i, v)| if *v > b.1 { (i, *v) } else { b })
            .0) as u32;
    }
    let tg = steps as f64 / t.elapsed().as_secs_f64();
    eprintln!(
        "decode speed on {}: prompt {pp:.2} tok/s (32 tokens), generation {tg:.2} tok/s ({} weight bytes per token)",
        dec.adapter_name(),
        w.stored_bytes()
    );
    // The CPU decoder on the same weights in the same run, for scale.
    let mut cpu = CpuDecoder::new(Arc::new(w), 256).expect("cpu decoder");
    cpu.forward(&prompt, Logits::Last).expect("cpu prompt");
    let t = std::time::Instant::now();
    for _ in 0..steps {
        cpu.forward(&[next], Logits::Last).expect("cpu step");
    }
    eprintln!(
        "cpu decoder, same run: generation {:.2} tok/s",
        steps as f64 / t.elapsed().as_secs_f64()
    );
}
