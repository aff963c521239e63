//! One criterion binary, a group per op family and one for the shipped
//! models end to end. CPU fast path beside the naive reference (where the
//! reference finishes in reasonable time); the GPU joins each group when the
//! GPU backend lands. Throughput is reported in FLOP (ops) or samples (models).

use std::hint::black_box;
use std::sync::Arc;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use wginfer::ops::{linear::Linear, matmul::MatMul, qlinear::QLinear, softmax::Softmax, unary, CaseRng, Op};
use wginfer::quant::{self, WeightFormat};
use wginfer::{Device, Model, Session, Tensor};

fn bench_op(c: &mut Criterion, group: &str, op: Arc<dyn Op>, inputs: Vec<Tensor>, label: &str, with_reference: bool) {
    let refs: Vec<&Tensor> = inputs.iter().collect();
    let shapes: Vec<&[usize]> = inputs.iter().map(|t| t.shape()).collect();
    let flops = op.flops(&shapes);
    let mut g = c.benchmark_group(group);
    g.throughput(Throughput::Elements(flops.max(1)));
    g.bench_function(BenchmarkId::new("cpu", label), |b| {
        b.iter(|| black_box(op.cpu(black_box(&refs))))
    });
    if with_reference {
        g.bench_function(BenchmarkId::new("cpu-reference", label), |b| {
            b.iter(|| black_box(op.reference(black_box(&refs))))
        });
    }
    g.finish();
}

fn matmul(c: &mut Criterion) {
    let mut rng = CaseRng::new(7);
    for n in [64usize, 256, 1024] {
        let inputs = vec![rng.tensor(&[n, n], -1.0, 1.0), rng.tensor(&[n, n], -1.0, 1.0)];
        bench_op(
            c,
            "matmul",
            Arc::new(MatMul),
            inputs.clone(),
            &format!("{n}x{n}x{n}"),
            n <= 256,
        );
        bench_gpu_matmul(c, &inputs, n);
    }
}

/// The same product as a one-node model in a GPU session on the software
/// adapter (lavapipe/llvmpipe here), synchronised: `run` returns read-back data.
/// Upload of A and read-back of C are inside the timed loop; B is a weight.
fn bench_gpu_matmul(c: &mut Criterion, inputs: &[Tensor], n: usize) {
    use wginfer::graph::{Graph, Node, ParamInfo, ValueInfo};
    use wginfer::tensor::ValueType;
    let x = ValueInfo {
        name: "a".into(),
        ty: ValueType::known(wginfer::DType::F32, &[n, n]),
    };
    let y = ValueInfo {
        name: "c".into(),
        ty: ValueType::known(wginfer::DType::F32, &[n, n]),
    };
    let node = Node {
        name: "matmul".into(),
        op: Arc::new(MatMul),
        inputs: vec!["a".into(), "b".into()],
        outputs: vec!["c".into()],
    };
    let params = std::collections::HashMap::from([("b".to_string(), inputs[1].clone())]);
    let model = Graph::new(
        "matmul",
        vec![x],
        vec![y],
        vec![ParamInfo::plain("b", wginfer::DType::F32, vec![n, n])],
        vec![node],
    )
    .map_err(wginfer::Error::from)
    .and_then(|g| Model::new(g, params).map_err(wginfer::Error::from));
    let session = model.and_then(|m| Session::new(&m, Device::Gpu(wginfer::AdapterChoice::Software)));
    let session = match session {
        Ok(s) => s,
        Err(e) => {
            eprintln!("SKIPPED: matmul/gpu-software: {e}");
            return;
        }
    };
    let mut g = c.benchmark_group("matmul");
    g.throughput(Throughput::Elements(2 * (n * n * n) as u64));
    g.bench_function(BenchmarkId::new("gpu-software", format!("{n}x{n}x{n}")), |b| {
        b.iter(|| black_box(session.run([("a", inputs[0].clone())])))
    });
    g.finish();
}

/// A session on the GPU software adapter for a chain of single-input layers
/// `x -> op_0 -> op_1 -> ... -> y` whose other inputs are weights (named in
/// `weights`, one list per layer, in the op's input order after x).
fn gpu_chain(
    name: &str,
    x_shape: &[usize],
    layers: Vec<(Arc<dyn Op>, Vec<Tensor>)>,
) -> Result<Session, wginfer::Error> {
    use wginfer::graph::{Graph, Node, ParamInfo, ValueInfo};
    use wginfer::tensor::ValueType;
    let mut params = std::collections::HashMap::new();
    let mut infos = Vec::new();
    let mut nodes = Vec::new();
    let mut types = vec![ValueType::known(wginfer::DType::F32, x_shape)];
    let mut prev = "x".to_string();
    for (li, (op, weights)) in layers.into_iter().enumerate() {
        let mut inputs = vec![prev.clone()];
        for (wi, w) in weights.into_iter().enumerate() {
            let pname = format!("l{li}.w{wi}");
            infos.push(ParamInfo::plain(&pname, w.dtype(), w.shape().to_vec()));
            types.push(ValueType::known(w.dtype(), w.shape()));
            params.insert(pname.clone(), w);
            inputs.push(pname);
        }
        let out = op.infer(&types)?.remove(0);
        types = vec![out];
        let oname = format!("h{li}");
        nodes.push(Node {
            name: format!("layer{li}"),
            op,
            inputs,
            outputs: vec![oname.clone()],
        });
        prev = oname;
    }
    let x = ValueInfo {
        name: "x".into(),
        ty: ValueType::known(wginfer::DType::F32, x_shape),
    };
    let y = ValueInfo {
        name: prev,
        ty: types.remove(0),
    };
    let g = Graph::new(name, vec![x], vec![y], infos, nodes)?;
    let model = Model::new(g, params)?;
    Session::new(&model, Device::Gpu(wginfer::AdapterChoice::Software))
}

/// Times a [`gpu_chain`] session: upload of x, every dispatch, read-back of y.
fn bench_gpu(
    c: &mut Criterion,
    group: &str,
    label: &str,
    throughput: u64,
    session: Result<Session, wginfer::Error>,
    x: &Tensor,
) {
    let session = match session {
        Ok(s) => s,
        Err(e) => {
            eprintln!("SKIPPED: {group}/gpu-software {label}: {e}");
            return;
        }
    };
    let mut g = c.benchmark_group(group);
    g.throughput(Throughput::Elements(throughput));
    g.bench_function(BenchmarkId::new("gpu-software", label), |b| {
        b.iter(|| black_box(session.run([("x", x.clone())])))
    });
    g.finish();
}

fn linear(c: &mut Criterion) {
    let mut rng = CaseRng::new(8);
    for (m, k, n) in [(1usize, 1024usize, 1024usize), (64, 1024, 1024)] {
        let inputs = vec![
            rng.tensor(&[m, k], -1.0, 1.0),
            rng.tensor(&[n, k], -1.0, 1.0),
            rng.tensor(&[n], -1.0, 1.0),
        ];
        bench_op(c, "linear", Arc::new(Linear), inputs, &format!("{m}x{k}->{n}"), m == 1);
    }
}

/// Linear layers per weight format at 1024x1024x1024 (and batch 1), beside f32.
fn qlinear(c: &mut Criterion) {
    let mut rng = CaseRng::new(11);
    for m in [1usize, 1024] {
        let (k, n) = (1024, 1024);
        let x = rng.tensor(&[m, k], -1.0, 1.0);
        let w = rng.tensor(&[n, k], -1.0, 1.0);
        let b = rng.tensor(&[n], -1.0, 1.0);
        bench_op(
            c,
            "qlinear",
            Arc::new(Linear),
            vec![x.clone(), w.clone(), b.clone()],
            &format!("f32 {m}x{k}->{n}"),
            false,
        );
        let flops = 2 * (m * k * n) as u64;
        let s = gpu_chain("linear", &[m, k], vec![(Arc::new(Linear), vec![w.clone(), b.clone()])]);
        bench_gpu(c, "qlinear", &format!("f32 {m}x{k}->{n}"), flops, s, &x);
        for format in [
            WeightFormat::F16,
            WeightFormat::Int8 { affine: false },
            WeightFormat::W8A8 { outliers: 0 },
            WeightFormat::Int4 {
                block: 32,
                with_min: false,
            },
            WeightFormat::Binary { xnor: true },
        ] {
            let Ok(wf) = w.as_f32() else { return };
            let Ok(packed) = quant::quantize_weight(&format, wf, n, k) else {
                return;
            };
            let mut weights = packed.clone();
            weights.push(b.clone());
            let mut inputs = vec![x.clone()];
            inputs.extend(packed);
            inputs.push(b.clone());
            let op = QLinear {
                format,
                in_features: k,
                out_features: n,
            };
            let s = gpu_chain("qlinear", &[m, k], vec![(Arc::new(op.clone()), weights)]);
            bench_gpu(c, "qlinear", &format!("{format} {m}x{k}->{n}"), flops, s, &x);
            bench_op(
                c,
                "qlinear",
                Arc::new(op),
                inputs,
                &format!("{format} {m}x{k}->{n}"),
                false,
            );
        }
    }
}

/// The int8 kernel under W8A8 alone: int8 x int8 -> int32 at 1024³ (2 ops per MAC).
fn int8_gemm(c: &mut Criterion) {
    let mut rng = CaseRng::new(12);
    let n = 1024usize;
    let a: Vec<i8> = (0..n * n).map(|_| (rng.next_u64() % 255) as u8 as i8).collect();
    let b: Vec<i8> = (0..n * n).map(|_| (rng.next_u64() % 255) as u8 as i8).collect();
    let mut out = vec![0i32; n * n];
    let mut g = c.benchmark_group("int8-gemm");
    g.throughput(Throughput::Elements(2 * (n * n * n) as u64));
    g.bench_function(BenchmarkId::new("cpu", "1024x1024x1024"), |bch| {
        bch.iter(|| wginfer::linalg::int8::gemm_i8(black_box(&a), n, black_box(&b), n, n, &mut out))
    });
    g.finish();
}

fn elementwise(c: &mut Criterion) {
    let mut rng = CaseRng::new(9);
    let x = rng.tensor(&[1 << 20], -4.0, 4.0);
    for kind in [
        unary::UnaryKind::Relu,
        unary::UnaryKind::Gelu,
        unary::UnaryKind::Sigmoid,
    ] {
        bench_op(
            c,
            "activation",
            Arc::new(unary::Unary { kind }),
            vec![x.clone()],
            &format!("{kind:?} 1M"),
            false,
        );
    }
    let x = rng.tensor(&[256, 4096], -8.0, 8.0);
    bench_op(c, "softmax", Arc::new(Softmax { axis: -1 }), vec![x], "256x4096", true);
}

fn digits_mlp(c: &mut Criterion) {
    let root = env!("CARGO_MANIFEST_DIR");
    let model = match Model::load(format!("{root}/models/digits-mlp/model.safetensors")) {
        Ok(m) => m,
        Err(e) => {
            eprintln!("SKIPPED digits-mlp bench: {e}");
            return;
        }
    };
    let session = match Session::new(&model, Device::Cpu) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("SKIPPED digits-mlp bench: {e}");
            return;
        }
    };
    let mut rng = CaseRng::new(10);
    let mut g = c.benchmark_group("digits-mlp");
    for batch in [1usize, 64, 450] {
        let x = rng.tensor(&[batch, 64], 0.0, 1.0);
        g.throughput(Throughput::Elements(batch as u64));
        g.bench_function(BenchmarkId::new("cpu", format!("batch {batch}")), |b| {
            b.iter(|| black_box(session.run([("input", x.clone())])))
        });
    }
    g.finish();
}

/// Structured pruning: a hidden layer pair at full width and with 50% of its
/// channels removed, and the digits MLP before and after `--method channels`.
fn pruned(c: &mut Criterion) {
    let mut rng = CaseRng::new(13);
    for (label, hidden) in [("dense", 1024usize), ("50% channels", 512)] {
        let x = rng.tensor(&[64, 1024], -1.0, 1.0);
        let w1 = rng.tensor(&[hidden, 1024], -1.0, 1.0);
        let b1 = rng.tensor(&[hidden], -1.0, 1.0);
        let w2 = rng.tensor(&[1024, hidden], -1.0, 1.0);
        let mut g = c.benchmark_group("pruned-layers");
        g.throughput(Throughput::Elements(64));
        g.bench_function(
            BenchmarkId::new("cpu", format!("{label} 1024->{hidden}->1024 batch 64")),
            |b| {
                b.iter(|| {
                    let h = Linear.cpu(&[&x, &w1, &b1]);
                    h.map(|h| Linear.cpu(&[&h[0], &w2]))
                })
            },
        );
        g.finish();
        let s = gpu_chain(
            "pruned",
            &[64, 1024],
            vec![
                (Arc::new(Linear), vec![w1.clone(), b1.clone()]),
                (Arc::new(Linear), vec![w2.clone()]),
            ],
        );
        bench_gpu(
            c,
            "pruned-layers",
            &format!("{label} 1024->{hidden}->1024 batch 64"),
            64,
            s,
            &x,
        );
    }
    let root = env!("CARGO_MANIFEST_DIR");
    let Ok(model) = Model::load(format!("{root}/models/digits-mlp/model.safetensors")) else {
        return;
    };
    let opts = wginfer::optimize::PruneOptions::new(
        wginfer::optimize::PruneMethod::Channels(wginfer::optimize::prune::Importance::Magnitude),
        0.5,
    );
    let Ok((small, _)) = wginfer::optimize::prune(&model, &opts, |_| {}) else {
        return;
    };
    let mut g = c.benchmark_group("digits-mlp-pruned");
    for (label, m) in [("dense", &model), ("50% channels", &small)] {
        let Ok(s) = Session::new(m, Device::Cpu) else { return };
        let x = rng.tensor(&[450, 64], 0.0, 1.0);
        g.throughput(Throughput::Elements(450));
        g.bench_function(BenchmarkId::new("cpu", format!("{label} batch 450")), |b| {
            b.iter(|| black_box(s.run([("input", x.clone())])))
        });
    }
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(20).warm_up_time(std::time::Duration::from_millis(500)).measurement_time(std::time::Duration::from_secs(2));
    targets = matmul, linear, qlinear, int8_gemm, pruned, elementwise, digits_mlp
}
criterion_main!(benches);
