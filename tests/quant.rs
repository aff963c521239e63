//! Weight formats: packing round trips, rounding bounds, and what each format
//! costs in accuracy on the real digits split.

mod common;

use common::root;
use proptest::prelude::*;
use wginfer::eval::{evaluate, EvalOptions};
use wginfer::model::load_tensors;
use wginfer::optimize::{quantize, QuantizeOptions};
use wginfer::quant::{self, WeightFormat};
use wginfer::{Device, Model, Session, Tensor};

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn nibbles_round_trip_exactly(v in prop::collection::vec(0u8..16, 0..200)) {
        let packed = quant::pack_nibbles(&v);
        prop_assert_eq!(packed.len(), v.len().div_ceil(2));
        prop_assert_eq!(&quant::unpack_nibbles(&packed)[..v.len()], &v[..]);
    }

    #[test]
    fn bits_round_trip_exactly(v in prop::collection::vec(any::<bool>(), 0..300)) {
        let words = v.len().div_ceil(32);
        let packed = quant::pack_bits(&v, words);
        prop_assert_eq!(packed.len(), words * 4);
        prop_assert_eq!(quant::unpack_bits(&packed, v.len()), v);
    }

    #[test]
    fn dequantized_weights_are_within_half_a_step(
        fmt in 0usize..12,
        out in 1usize..9,
        inp in 1usize..300,
        scale in 0.001f32..10.0,
        seed in any::<u64>(),
    ) {
        let format = quant::all_formats()[fmt];
        if let WeightFormat::W8A8 { outliers } = format {
            prop_assume!(outliers as usize <= inp);
        }
        let mut rng = wginfer::ops::CaseRng::new(seed);
        let w: Vec<f32> = (0..out * inp).map(|_| rng.uniform(-scale, scale)).collect();
        let packed = quant::quantize_weight(&format, &w, out, inp).unwrap();
        let refs: Vec<&Tensor> = packed.iter().collect();
        let back = quant::dequantize(&format, &refs, out, inp).unwrap();
        prop_assert_eq!(packed.iter().map(Tensor::size_in_bytes).sum::<usize>(), format.packed_bytes(out, inp));
        match format.step_bound(&packed, out, inp) {
            Some(bound) => {
                // int4 blocks carry f16 scales/minimums: allow their rounding too.
                let slack = if matches!(format, WeightFormat::Int4 { .. }) { scale * 2e-3 } else { scale * 1e-6 };
                for i in 0..w.len() {
                    if let WeightFormat::Int4 { block, .. } = format {
                        // int4 picks each block's scale for the least squared
                        // error, so the largest values of a block may clip:
                        // a weight is within half a step, or it was clipped
                        // to the block's end code (nothing in its block
                        // dequantizes further out in its direction).
                        let (r, c, b) = (i / inp, i % inp, block as usize);
                        let blk = &back[r * inp + c / b * b..r * inp + ((c / b + 1) * b).min(inp)];
                        let (lo, hi) = blk.iter().fold((f32::INFINITY, f32::NEG_INFINITY), |(l, h), &x| (l.min(x), h.max(x)));
                        let clipped = (w[i] > back[i] && back[i] == hi) || (w[i] < back[i] && back[i] == lo);
                        prop_assert!((w[i] - back[i]).abs() <= bound[i] + slack || clipped,
                            "{format}: w {} -> {} (half step {}, block range {lo}..{hi})", w[i], back[i], bound[i]);
                    } else {
                        prop_assert!((w[i] - back[i]).abs() <= bound[i] + slack,
                            "{format}: w {} -> {} (half step {})", w[i], back[i], bound[i]);
                    }
                }
                if let WeightFormat::Int4 { block, with_min } = format {
                    // ... and each block's squared error is at most that of
                    // plain round-to-nearest over the block's range.
                    let rtn = rtn_int4(&w, out, inp, block as usize, with_min);
                    let b = block as usize;
                    for r in 0..out {
                        for k in 0..inp.div_ceil(b) {
                            let idx = r * inp + k * b..r * inp + ((k + 1) * b).min(inp);
                            let err = |v: &[f32]| idx.clone().map(|j| (w[j] - v[j]).powi(2)).sum::<f32>();
                            let (got, plain) = (err(&back), err(&rtn));
                            prop_assert!(got <= plain * (1.0 + 1e-5) + 1e-30,
                                "{format} row {r} block {k}: squared error {got} > round-to-nearest {plain}");
                        }
                    }
                }
            }
            None if format == WeightFormat::F16 => {
                for i in 0..w.len() {
                    prop_assert!((w[i] - back[i]).abs() <= w[i].abs() * 4.9e-4 + 6e-8, "{} -> {}", w[i], back[i]);
                }
            }
            None => {
                // Binary: sign kept, magnitude = the row's mean |w|.
                for r in 0..out {
                    let row = &w[r * inp..(r + 1) * inp];
                    let alpha = row.iter().map(|x| x.abs()).sum::<f32>() / inp as f32;
                    for c in 0..inp {
                        let want = if row[c] >= 0.0 { alpha } else { -alpha };
                        prop_assert!((back[r * inp + c] - want).abs() <= alpha * 1e-6);
                    }
                }
            }
        }
    }
}

/// Plain round-to-nearest int4, written out independently of the crate:
/// scale max|w|/7 (or the block's [min, max] in 15 steps), f16 scale/min.
fn rtn_int4(w: &[f32], out: usize, inp: usize, block: usize, with_min: bool) -> Vec<f32> {
    let f16 = |x: f32| half::f16::from_f32(x).to_f32();
    let mut back = vec![0.0; w.len()];
    for r in 0..out {
        for k in 0..inp.div_ceil(block) {
            let idx = r * inp + k * block..r * inp + ((k + 1) * block).min(inp);
            let vals = &w[idx.clone()];
            if with_min {
                let lo = vals.iter().fold(f32::INFINITY, |m, &x| m.min(x));
                let hi = vals.iter().fold(f32::NEG_INFINITY, |m, &x| m.max(x));
                let m = f16(lo);
                let s = if hi > lo { f16((hi - m) / 15.0) } else { 1.0 };
                for j in idx {
                    back[j] = ((w[j] - m) / s).round().clamp(0.0, 15.0) * s + m;
                }
            } else {
                let max = vals.iter().fold(0.0f32, |m, &x| m.max(x.abs()));
                let s = if max > 0.0 { f16(max / 7.0) } else { 1.0 };
                for j in idx {
                    back[j] = (w[j] / s).round().clamp(-8.0, 7.0) * s;
                }
            }
        }
    }
    back
}

#[test]
fn pow2_uses_the_int8_range_without_clipping() {
    let w = [0.3f32, -0.9, 0.05, 0.0, 3.0, -1.5];
    let f = WeightFormat::Pow2 {
        per_channel: true,
        fixed_shift: None,
    };
    let packed = quant::quantize_weight(&f, &w, 2, 3).unwrap();
    let p = packed[1].as_slice::<i8>().unwrap();
    // Row 0: max 0.9 -> largest p with 0.9·2^p <= 127 is 7 (115.2); row 1: max 3.0 -> 5 (96).
    assert_eq!(p, &[7, 5]);
    let q = packed[0].as_slice::<i8>().unwrap();
    assert_eq!(q, &[38, -115, 6, 0, 96, -48]);
    // Dequantization is an exact power-of-two scaling of q.
    let back = quant::dequantize(&f, &packed.iter().collect::<Vec<_>>(), 2, 3).unwrap();
    assert_eq!(back[1], -115.0 / 128.0);
    // A fixed p clips what does not fit.
    let fixed = WeightFormat::Pow2 {
        per_channel: false,
        fixed_shift: Some(7),
    };
    let packed = quant::quantize_weight(&fixed, &w, 2, 3).unwrap();
    assert_eq!(packed[0].as_slice::<i8>().unwrap()[4], 127);
}

#[test]
fn int8_symmetric_and_affine_known_values() {
    let w = [1.0f32, -0.5, 0.25, 0.0];
    let packed = quant::quantize_weight(&WeightFormat::Int8 { affine: false }, &w, 1, 4).unwrap();
    assert_eq!(packed[0].as_slice::<i8>().unwrap(), &[127, -64, 32, 0]);
    assert_eq!(packed[1].as_f32().unwrap(), &[1.0 / 127.0]);
    let packed = quant::quantize_weight(&WeightFormat::Int8 { affine: true }, &w, 1, 4).unwrap();
    // Range [-0.5, 1.0]: s = 1.5/255, zero point round(0.5/s) = 85.
    assert_eq!(packed[2].as_slice::<u8>().unwrap(), &[85]);
    assert_eq!(packed[0].as_slice::<u8>().unwrap(), &[255, 0, 128, 85]);
}

fn digits() -> (Model, Tensor, Tensor) {
    let model = Model::load(root("models/digits-mlp/model.safetensors")).unwrap();
    let data = load_tensors(root("models/digits-mlp/digits_test.safetensors")).unwrap();
    let get = |n: &str| data.iter().find(|(k, _)| k == n).unwrap().1.clone();
    (model, get("input"), get("label"))
}

fn accuracy(model: &Model, device: Device, x: &Tensor, y: &Tensor) -> (f64, Vec<usize>) {
    let s = Session::new(model, device).unwrap();
    let opts = EvalOptions {
        input: "input".into(),
        output: "probabilities".into(),
        batch_size: 0,
    };
    let r = evaluate(&s, x, y, &opts, |_, _| {}).unwrap();
    (r.accuracy(), r.predictions)
}

#[test]
fn digits_accuracy_cost_per_format() {
    let (model, x, y) = digits();
    let (base, _) = accuracy(&model, Device::Cpu, &x, &y);
    println!("f32: accuracy {base:.4}, {} param bytes", model.param_bytes());
    for format in quant::all_formats() {
        let (q, report) = quantize(&model, &QuantizeOptions::new(format), |_, _| {}).unwrap();
        let (acc, fast) = accuracy(&q, Device::Cpu, &x, &y);
        // The fast CPU kernels and the naive references predict the same classes.
        let (acc_ref, reference) = accuracy(&q, Device::CpuReference, &x, &y);
        let agree = fast.iter().zip(&reference).filter(|(a, b)| a == b).count();
        println!(
            "{format:<12} accuracy {acc:.4} ({:+.2} points), reference {acc_ref:.4}, fast/reference agree {agree}/450, bytes {} -> {}",
            (acc - base) * 100.0,
            report.bytes_before,
            report.bytes_after
        );
        assert!(
            agree >= 449,
            "{format}: fast and reference kernels disagree on {} samples",
            450 - agree
        );
        let loss = (base - acc) * 100.0;
        match format {
            WeightFormat::Int8 { .. } | WeightFormat::Pow2 { .. } | WeightFormat::W8A8 { .. } | WeightFormat::F16 => {
                assert!(loss <= 0.3, "{format} loses {loss:.2} points (aim <= 0.3)")
            }
            WeightFormat::Int4 { .. } => assert!(loss <= 1.5, "{format} loses {loss:.2} points (aim <= 1.5)"),
            WeightFormat::Binary { .. } | WeightFormat::NM { .. } => {}
        }
        assert!(
            report.bytes_after < report.bytes_before,
            "{format} did not shrink the model"
        );
    }
}

#[test]
fn keeping_first_and_last_layers_helps_binary() {
    let (model, x, y) = digits();
    let all = quantize(
        &model,
        &QuantizeOptions::new(WeightFormat::Binary { xnor: false }),
        |_, _| {},
    )
    .unwrap()
    .0;
    let mut opts = QuantizeOptions::new(WeightFormat::Binary { xnor: false });
    opts.layers.insert("fc1".into(), WeightFormat::F16);
    opts.layers.insert("fc3".into(), WeightFormat::F16);
    let mixed = quantize(&model, &opts, |_, _| {}).unwrap().0;
    let (a, _) = accuracy(&all, Device::Cpu, &x, &y);
    let (b, _) = accuracy(&mixed, Device::Cpu, &x, &y);
    println!("binary everywhere {a:.4}; fc1/fc3 in f16 {b:.4}");
    assert!(
        b > a,
        "keeping the first and last layers in f16 should recover accuracy ({a} vs {b})"
    );
    assert!(b >= 0.9, "binary middle layer with f16 ends: {b}");
}

#[test]
fn quantized_model_saves_and_loads_with_identical_outputs() {
    let (model, x, _) = digits();
    let mut opts = QuantizeOptions::new(WeightFormat::Int4 {
        block: 32,
        with_min: false,
    });
    opts.keep.push("fc3".into());
    let (q, report) = quantize(&model, &opts, |_, _| {}).unwrap();
    assert!(report.layers.iter().any(|l| l.node == "fc3" && l.format.is_none()));
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("q.safetensors");
    q.save(&path).unwrap();
    let loaded = Model::load(&path).unwrap();
    // The file holds packed tensors, not f32 weights.
    assert!(loaded.param("fc1.weight").is_none());
    assert_eq!(loaded.param("fc1.weight.q").unwrap().dtype(), wginfer::DType::U8);
    assert_eq!(loaded.param_bytes(), q.param_bytes());
    let a = Session::new(&q, Device::Cpu)
        .unwrap()
        .run([("input", x.clone())])
        .unwrap();
    let b = Session::new(&loaded, Device::Cpu).unwrap().run([("input", x)]).unwrap();
    assert_eq!(a, b);
}

#[test]
fn unknown_layer_names_are_refused() {
    let (model, _, _) = digits();
    let mut opts = QuantizeOptions::new(WeightFormat::F16);
    opts.keep.push("fc9".into());
    let e = quantize(&model, &opts, |_, _| {}).unwrap_err().to_string();
    assert!(e.contains("fc9") && e.contains("fc1, fc2, fc3"), "{e}");
}

/// W8A8 v2 packing: codes, scales without the outlier columns, exact row
/// sums, outlier columns in f32; names and serde.
#[test]
fn w8a8_packing_keeps_outliers_and_row_sums() {
    let (out, inp) = (3, 6);
    // Column 4 holds the large weights: the data-free rule keeps it in f32.
    let w: Vec<f32> = vec![
        0.5, -0.25, 0.125, 1.0, 40.0, -1.0, //
        0.0, 0.0, 0.0, 0.0, -30.0, 0.0, //
        -0.127, 0.254, 0.0, 0.0, 5.0, 0.1,
    ];
    let format = WeightFormat::W8A8 { outliers: 1 };
    let packed = quant::quantize_weight(&format, &w, out, inp).expect("pack");
    assert_eq!(packed.len(), 5);
    let q = packed[0].as_slice::<i8>().expect("q");
    let scale = packed[1].as_f32().expect("scale");
    let wsum = packed[2].as_slice::<i32>().expect("wsum");
    assert_eq!(packed[3].as_slice::<i32>().expect("index"), &[4]);
    assert_eq!(packed[4].as_f32().expect("outlier weights"), &[40.0, -30.0, 5.0]);
    // Scales from the other columns: 1/127, an all-zero row gets 1, 0.254/127.
    assert_eq!(scale, &[1.0 / 127.0, 1.0, 0.254 / 127.0]);
    assert_eq!(&q[..6], &[64, -32, 16, 127, 0, -127]);
    assert_eq!(&q[6..12], &[0; 6]);
    assert_eq!(&q[12..], &[-64, 127, 0, 0, 0, 50]);
    for r in 0..out {
        assert_eq!(
            wsum[r],
            q[r * inp..(r + 1) * inp].iter().map(|&v| v as i32).sum::<i32>()
        );
    }
    let refs: Vec<&Tensor> = packed.iter().collect();
    let back = quant::dequantize(&format, &refs, out, inp).expect("dequantize");
    for c in 0..out {
        assert_eq!(back[c * inp + 4], w[c * inp + 4], "outlier weights are exact");
    }
    // Names, parsing and serde (an old file's `{"kind":"w8a8"}` has no outliers).
    assert_eq!(format.name(), "w8a8+o1");
    assert_eq!(
        "w8a8+o8".parse::<WeightFormat>(),
        Ok(WeightFormat::W8A8 { outliers: 8 })
    );
    assert_eq!("w8a8".parse::<WeightFormat>(), Ok(WeightFormat::W8A8 { outliers: 0 }));
    assert!("w8a8+ox".parse::<WeightFormat>().is_err());
    let json = serde_json::to_string(&WeightFormat::W8A8 { outliers: 8 }).expect("json");
    assert_eq!(json, r#"{"kind":"w8a8","outliers":8}"#);
    let old: WeightFormat = serde_json::from_str(r#"{"kind":"w8a8"}"#).expect("old json");
    assert_eq!(old, WeightFormat::W8A8 { outliers: 0 });
    assert_eq!(
        format.tensor_names(),
        ["q", "scale", "wsum", "outlier_index", "outlier_weight"]
    );
    assert_eq!(
        WeightFormat::W8A8 { outliers: 0 }.tensor_names(),
        ["q", "scale", "wsum"]
    );
    // More outliers than inputs: a typed error.
    assert!(quant::quantize_weight(&WeightFormat::W8A8 { outliers: 7 }, &w, out, inp).is_err());
}

/// Corrupt W8A8 tensors (a wrong row sum, an index out of order or range, a
/// code in an outlier column) are typed errors, from the checker and the op.
#[test]
fn corrupt_w8a8_tensors_are_typed_errors() {
    use wginfer::error::OpError;
    use wginfer::ops::{qlinear::QLinear, Op};
    let (out, inp) = (4, 40);
    let mut rng = wginfer::ops::CaseRng::new(3);
    let w = rng.tensor(&[out, inp], -1.0, 1.0);
    let format = WeightFormat::W8A8 { outliers: 2 };
    let packed = quant::quantize_weight(&format, w.as_f32().expect("w"), out, inp).expect("pack");
    let x = rng.tensor(&[2, inp], -1.0, 1.0);
    let op = QLinear {
        format,
        in_features: inp,
        out_features: out,
    };
    let check = |p: &[Tensor], tensor: &str| {
        let refs: Vec<&Tensor> = p.iter().collect();
        match quant::check_packed(&format, &refs, out, inp) {
            Err(OpError::PackedData { tensor: t, .. }) => assert_eq!(t, tensor),
            other => panic!("{tensor}: {other:?}"),
        }
        let mut inputs = vec![&x];
        inputs.extend(refs.iter().copied());
        assert!(op.cpu(&inputs).is_err(), "{tensor}: cpu");
        assert!(op.reference(&inputs).is_err(), "{tensor}: reference");
        // The prepared path refuses the weight and runs (and fails) as cpu().
        let consts: Vec<Option<&Tensor>> = (0..inputs.len()).map(|i| (i > 0).then(|| inputs[i])).collect();
        assert!(op.prepare_cpu(&consts).is_none(), "{tensor}: prepared");
    };
    let mut bad = packed.clone();
    let mut wsum = bad[2].as_slice::<i32>().expect("wsum").to_vec();
    wsum[1] += 1;
    bad[2] = Tensor::new(vec![out], wginfer::tensor::Storage::I32(wsum)).expect("t");
    check(&bad, "wsum");
    let idx = packed[3].as_slice::<i32>().expect("index").to_vec();
    for wrong in [
        vec![idx[1], idx[0]],
        vec![idx[0], inp as i32],
        vec![-1, idx[1]],
        vec![idx[0], idx[0]],
    ] {
        let mut bad = packed.clone();
        bad[3] = Tensor::new(vec![2], wginfer::tensor::Storage::I32(wrong)).expect("t");
        check(&bad, "outlier_index");
    }
    let mut q = packed[0].as_slice::<i8>().expect("q").to_vec();
    q[idx[0] as usize] = 3;
    let mut wsum = packed[2].as_slice::<i32>().expect("wsum").to_vec();
    wsum[0] += 3; // the row sum still matches
    let mut bad = packed.clone();
    bad[0] = Tensor::new(vec![out, inp], wginfer::tensor::Storage::I8(q)).expect("t");
    bad[2] = Tensor::new(vec![out], wginfer::tensor::Storage::I32(wsum)).expect("t");
    check(&bad, "q");
}

/// W8A8 on hand-worked numbers: x = [-1, 2] gives lo = -1, hi = 2,
/// s = 3/255, z = 85, codes [0, 255]; w = [1, 0.5] gives codes [127, 64]
/// (scale 1/127), wsum 191: acc = 255·64 - 85·191 = 85, y = 85·s/127 = 1/127
/// (the exact x·w is 0; 0.5 rounds to 64/127). The fast path agrees bit for bit.
#[test]
fn w8a8_known_values_and_prepared_path() {
    use wginfer::ops::{qlinear::QLinear, Op};
    let format = WeightFormat::W8A8 { outliers: 0 };
    let packed = quant::quantize_weight(&format, &[1.0, 0.5], 1, 2).expect("pack");
    assert_eq!(packed[2].as_slice::<i32>().expect("wsum"), &[191]);
    let x = Tensor::from_vec(vec![1, 2], vec![-1.0f32, 2.0]).expect("x");
    let op = QLinear {
        format,
        in_features: 2,
        out_features: 1,
    };
    let inputs = [&x, &packed[0], &packed[1], &packed[2]];
    let y = op.cpu(&inputs).expect("cpu")[0].to_f32_vec();
    let want = 85.0f32 * ((3.0f32 / 255.0) * (1.0 / 127.0));
    assert!(
        (y[0] - want).abs() <= 1e-7 && (want - 1.0 / 127.0).abs() < 1e-7,
        "{y:?} vs {want}"
    );
    let r = op.reference(&inputs).expect("reference")[0].to_f32_vec();
    assert!((r[0] - y[0]).abs() <= 1e-7, "{r:?}");
    // cpu_prepared computes what cpu computes, to the bit, with outliers,
    // bias, rows of every kind, and sizes that run in parallel.
    let mut rng = wginfer::ops::CaseRng::new(21);
    for (m, k, n, c) in [(1, 17, 5, 1), (37, 384, 100, 8), (128, 384, 384, 8), (70, 1000, 40, 0)] {
        let format = WeightFormat::W8A8 { outliers: c };
        let w = rng.tensor(&[n, k], -1.0, 1.0);
        let packed = quant::quantize_weight(&format, w.as_f32().expect("w"), n, k).expect("pack");
        let mut xv = rng.tensor(&[m, k], -2.0, 1.0).to_f32_vec();
        xv[..k].fill(0.0);
        let x = Tensor::from_vec(vec![m, k], xv).expect("x");
        let b = rng.tensor(&[n], -1.0, 1.0);
        let mut inputs = vec![&x];
        inputs.extend(packed.iter());
        inputs.push(&b);
        let op = QLinear {
            format,
            in_features: k,
            out_features: n,
        };
        let consts: Vec<Option<&Tensor>> = (0..inputs.len()).map(|i| (i > 0).then(|| inputs[i])).collect();
        let plain = op.cpu(&inputs).expect("cpu")[0].to_f32_vec();
        let Some(p) = op.prepare_cpu(&consts) else {
            common::skip("prepared W8A8 needs AVX-512 VNNI or AVX2, which this CPU lacks");
            return;
        };
        let fast = op.cpu_prepared(&inputs, &p).expect("prepared")[0].to_f32_vec();
        for (i, (a, b)) in fast.iter().zip(&plain).enumerate() {
            assert_eq!(a.to_bits(), b.to_bits(), "{m}x{k}->{n} +o{c} at {i}: {a} vs {b}");
        }
    }
}
