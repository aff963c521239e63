//! GPU kernels against the CPU references: every registered op × its cases
//! (and random samples), and the shipped digits MLP against the CPU session.
//!
//! The tests ask for an adapter explicitly (software ones included, so they
//! run on lavapipe in CI); `WGINFER_TEST_ADAPTER` picks one by choice string
//! (e.g. `gl`, `name:llvmpipe`). With no adapter they print a visible
//! `SKIPPED` line and pass, unless `WGINFER_REQUIRE_GPU=1`.

mod common;

use std::collections::HashMap;
use std::io::Write;
use std::sync::{Arc, OnceLock};

use wginfer::backend::gpu::{
    has_kernel, list_adapters, AdapterChoice, GpuContext, GpuExecutor, GpuOptions, MatmulKernel, Placement,
};
use wginfer::graph::{Graph, Node, ValueInfo};
use wginfer::ops::qlinear::QLinear;
use wginfer::ops::{CaseRng, OpCase, REGISTRY};
use wginfer::tensor::ValueType;
use wginfer::{DType, Device, Model, Session, Tensor};

/// Says so on the real stderr (not the captured one), so a skip is visible
/// in `cargo test` output.
fn say(line: &str) {
    let _ = writeln!(std::io::stderr(), "{line}");
}

/// The adapter these tests run on: `WGINFER_TEST_ADAPTER`, else the best
/// adapter that exists, software included.
fn adapter_choice() -> Option<AdapterChoice> {
    static CHOICE: OnceLock<Option<AdapterChoice>> = OnceLock::new();
    CHOICE
        .get_or_init(|| {
            if let Ok(s) = std::env::var("WGINFER_TEST_ADAPTER") {
                return Some(s.parse().unwrap_or_else(|e| panic!("WGINFER_TEST_ADAPTER: {e}")));
            }
            list_adapters().first().map(|a| AdapterChoice::Name(a.name.clone()))
        })
        .clone()
}

fn gpu() -> Option<Arc<GpuContext>> {
    static CTX: OnceLock<Option<Arc<GpuContext>>> = OnceLock::new();
    let ctx = CTX
        .get_or_init(|| {
            let choice = adapter_choice()?;
            match GpuContext::new(&choice) {
                Ok(c) => {
                    say(&format!(
                        "gpu tests on: {} ({}, {})",
                        c.adapter().name,
                        c.adapter().backend,
                        c.adapter().device_type
                    ));
                    Some(c)
                }
                Err(e) => {
                    say(&format!("cannot open adapter {choice}: {e}"));
                    None
                }
            }
        })
        .clone();
    if ctx.is_none() {
        common::skip_or_fail(
            "WGINFER_REQUIRE_GPU",
            "no wgpu adapter could be opened (install mesa-vulkan-drivers for lavapipe)",
        );
    }
    ctx
}

/// A one-node graph running the case's op on graph inputs `x0, x1, ...`,
/// with every output of the op a graph output `y0, y1, ...`.
fn single_op_graph(case: &OpCase) -> Graph {
    let types: Vec<ValueType> = case
        .inputs
        .iter()
        .map(|t| ValueType::known(t.dtype(), t.shape()))
        .collect();
    let out = case.op.infer(&types).expect("case infers");
    let inputs: Vec<ValueInfo> = types
        .into_iter()
        .enumerate()
        .map(|(i, ty)| ValueInfo {
            name: format!("x{i}"),
            ty,
        })
        .collect();
    let node = Node {
        name: "n".into(),
        op: case.op.clone(),
        inputs: inputs.iter().map(|i| i.name.clone()).collect(),
        outputs: (0..out.len()).map(|i| format!("y{i}")).collect(),
    };
    let outputs = out
        .into_iter()
        .enumerate()
        .map(|(i, ty)| ValueInfo {
            name: format!("y{i}"),
            ty,
        })
        .collect();
    Graph::new("case", inputs, outputs, vec![], vec![node]).expect("case graph")
}

/// Runs one case; returns the CPU-fallback reason when the GPU backend has no
/// kernel for it (an op or format without a shader). An op the backend does
/// have a kernel for must run on the GPU.
fn check_case(ctx: &Arc<GpuContext>, case: &OpCase, options: &GpuOptions) -> Option<String> {
    let graph = Arc::new(single_op_graph(case));
    let exec = GpuExecutor::new(graph, Arc::new(HashMap::new()), ctx.clone(), options.clone())
        .unwrap_or_else(|e| panic!("{}: compile: {e}", case.name));
    let report = exec.plan_report(Some(
        &case.inputs.iter().map(|t| t.shape().to_vec()).collect::<Vec<_>>(),
    ));
    let report = report.unwrap_or_else(|e| panic!("{}: plan: {e}", case.name));
    let all_f32 = case.inputs.iter().all(|t| t.dtype() == DType::F32);
    // QLinear kernels read the packed (u8/i8/f16) tensors themselves.
    let qlinear = case.op.downcast_ref::<QLinear>();
    let mut fallback = None;
    for n in &report.nodes {
        if let Placement::Cpu { reason } = &n.placement {
            assert!(
                !(has_kernel(&*case.op) && (all_f32 || qlinear.is_some())),
                "{}: node ran on the CPU, not the GPU: {reason}",
                case.name
            );
            fallback = Some(reason.clone());
        }
    }
    let got = exec
        .run(case.inputs.clone())
        .unwrap_or_else(|e| panic!("{}: run: {e}", case.name));
    let want = case.op.reference(&case.input_refs()).expect("reference");
    let tol = match qlinear {
        Some(q) => common::qlinear_tolerance(&q.format, &case.inputs),
        None => common::tolerance(case.op.validation(), DType::F32),
    };
    assert_eq!(got.len(), want.len(), "{}: output count", case.name);
    for (i, w) in want.iter().enumerate() {
        common::assert_close(&got[&format!("y{i}")], w, tol, &format!("{} (output {i})", case.name));
    }
    fallback
}

#[test]
fn every_registered_op_matches_its_reference() {
    let Some(ctx) = gpu() else { return };
    let (mut on_gpu, mut fell_back) = (0, 0);
    for def in REGISTRY {
        let mut reasons = Vec::new();
        for case in (def.cases)() {
            match check_case(&ctx, &case, &GpuOptions::default()) {
                None => on_gpu += 1,
                Some(r) => {
                    fell_back += 1;
                    reasons.push(r);
                }
            }
        }
        if let Some(r) = reasons.first() {
            say(&format!(
                "NO GPU KERNEL: {} ({} cases checked through the CPU fallback): {r}",
                def.op_type,
                reasons.len()
            ));
        }
    }
    say(&format!(
        "gpu parity on {}: {on_gpu} cases on the GPU, {fell_back} through the CPU fallback",
        ctx.adapter().name
    ));
}

#[test]
fn random_samples_match_their_reference() {
    let Some(ctx) = gpu() else { return };
    let mut rng = CaseRng::new(0x5eed);
    for def in REGISTRY {
        for _ in 0..8 {
            let case = (def.sample)(&mut rng);
            check_case(&ctx, &case, &GpuOptions::default());
        }
    }
}

#[test]
fn both_matmul_kernels_match_on_odd_sizes() {
    let Some(ctx) = gpu() else { return };
    for kernel in [MatmulKernel::Blocked, MatmulKernel::Tiled] {
        let options = GpuOptions {
            matmul: kernel,
            ..GpuOptions::default()
        };
        for def in REGISTRY
            .iter()
            .filter(|d| d.op_type == "MatMul" || d.op_type == "Linear")
        {
            for case in (def.cases)() {
                check_case(&ctx, &case, &options);
            }
        }
        let mut rng = CaseRng::new(77);
        // Unaligned (the general kernels) and aligned (vec4 kernels) sizes, none a tile multiple.
        for (m, k, n) in [(65, 129, 67), (130, 17, 3), (4, 1000, 70), (68, 132, 260), (5, 8, 4)] {
            let a = rng.tensor(&[m, k], -1.0, 1.0);
            let b = rng.tensor(&[k, n], -1.0, 1.0);
            let case = OpCase::new(
                format!("{kernel:?} matmul {m}x{k}x{n}"),
                Arc::new(wginfer::ops::matmul::MatMul),
                vec![a, b],
            );
            check_case(&ctx, &case, &options);
        }
        // Batched with a batch per side (no folding), aligned.
        let (a, b) = (rng.tensor(&[3, 20, 16], -1.0, 1.0), rng.tensor(&[3, 16, 8], -1.0, 1.0));
        let case = OpCase::new("batched aligned", Arc::new(wginfer::ops::matmul::MatMul), vec![a, b]);
        check_case(&ctx, &case, &options);
        // Linear, aligned, wider than one 16-column tile per invocation, with bias.
        let inputs = vec![
            rng.tensor(&[70, 128], -1.0, 1.0),
            rng.tensor(&[200, 128], -1.0, 1.0),
            rng.tensor(&[200], -1.0, 1.0),
        ];
        let case = OpCase::new("linear 70x128->200", Arc::new(wginfer::ops::linear::Linear), inputs);
        check_case(&ctx, &case, &options);
    }
}

fn digits() -> (Model, Tensor, Vec<i64>) {
    let model = Model::load(common::root("models/digits-mlp/model.safetensors")).expect("model");
    let data = wginfer::model::load_tensors(common::root("models/digits-mlp/digits_test.safetensors")).expect("data");
    let get = |n: &str| {
        data.iter()
            .find(|(k, _)| k == n)
            .map(|(_, t)| t.clone())
            .unwrap_or_else(|| panic!("no `{n}` in the test split"))
    };
    (model, get("input"), get("label").to_i64_vec())
}

fn argmax(row: &[f32]) -> usize {
    row.iter()
        .enumerate()
        .fold(
            (0, f32::NEG_INFINITY),
            |(bi, bv), (i, &v)| if v > bv { (i, v) } else { (bi, bv) },
        )
        .0
}

fn compare_probs(gpu: &Tensor, cpu: &Tensor, what: &str) {
    assert_eq!(gpu.shape(), cpu.shape(), "{what}");
    let (g, c) = (gpu.as_f32().unwrap(), cpu.as_f32().unwrap());
    let mut worst = 0.0f32;
    for (i, (gr, cr)) in g.chunks(10).zip(c.chunks(10)).enumerate() {
        assert_eq!(argmax(gr), argmax(cr), "{what}: sample {i}: GPU {gr:?} vs CPU {cr:?}");
        for (a, b) in gr.iter().zip(cr) {
            worst = worst.max((a - b).abs());
        }
    }
    assert!(worst <= 1e-5, "{what}: max |Δprob| {worst:e} > 1e-5");
}

#[test]
fn digits_mlp_matches_the_cpu_session() {
    let Some(ctx) = gpu() else { return };
    let choice = adapter_choice().expect("an adapter");
    let (model, input, labels) = digits();
    let cpu = Session::new(&model, Device::Cpu).expect("cpu session");
    let gpu = Session::new(&model, Device::Gpu(choice)).expect("gpu session");
    assert!(gpu.backend().starts_with("gpu"), "{}", gpu.backend());

    let want = cpu.run([("input", input.clone())]).expect("cpu run");
    let got = gpu.run([("input", input.clone())]).expect("gpu run");
    compare_probs(&got["probabilities"], &want["probabilities"], "digits batch 450");
    let p = got["probabilities"].as_f32().unwrap();
    let correct = p
        .chunks(10)
        .zip(&labels)
        .filter(|(r, &l)| argmax(r) as i64 == l)
        .count();
    say(&format!(
        "digits MLP on {}: accuracy {:.4} ({correct}/{})",
        ctx.adapter().name,
        correct as f64 / labels.len() as f64,
        labels.len()
    ));

    // Batch 1 (the GEMV path, and a second cached plan), and batch 17.
    for rows in [(0, 1), (5, 6), (100, 117)] {
        let x = input.slice_rows(rows.0, rows.1).unwrap();
        let want = cpu.run([("input", x.clone())]).unwrap();
        let got = gpu.run([("input", x)]).unwrap();
        compare_probs(&got["probabilities"], &want["probabilities"], &format!("rows {rows:?}"));
        common::assert_close(
            &got["logits"],
            &want["logits"],
            common::tolerance(wginfer::ops::Validation::Approximate, DType::F32),
            "logits",
        );
    }

    // The whole model is one submit; the activations fold into the Linears.
    let plan = gpu.gpu_plan(Some(&[vec![1, 64]])).expect("a gpu plan").expect("plan");
    say(&format!("{plan}"));
    assert_eq!(plan.submits, 1, "{plan}");
    assert_eq!(plan.dispatches, 4, "{plan}");
    assert_eq!(plan.readbacks, 2, "{plan}");
}

#[test]
fn reshape_of_a_device_value_is_an_alias() {
    let Some(ctx) = gpu() else { return };
    let mut rng = CaseRng::new(9);
    let x = rng.tensor(&[3, 17, 5], -3.0, 3.0);
    let f32_3 = |shape: &[usize]| ValueType::known(DType::F32, shape);
    let node = |name: &str, op: Arc<dyn wginfer::ops::Op>, i: &str, o: &str| Node {
        name: name.into(),
        op,
        inputs: vec![i.into()],
        outputs: vec![o.into()],
    };
    let graph = Graph::new(
        "alias",
        vec![ValueInfo {
            name: "x".into(),
            ty: f32_3(&[3, 17, 5]),
        }],
        vec![ValueInfo {
            name: "z".into(),
            ty: f32_3(&[51, 5]),
        }],
        vec![],
        vec![
            node(
                "act",
                Arc::new(wginfer::ops::unary::Unary {
                    kind: wginfer::ops::unary::UnaryKind::Tanh,
                }),
                "x",
                "y",
            ),
            node("flat", Arc::new(wginfer::ops::view::Flatten { axis: 2 }), "y", "z"),
        ],
    )
    .unwrap();
    let exec = GpuExecutor::new(Arc::new(graph), Arc::new(HashMap::new()), ctx, GpuOptions::default()).unwrap();
    let plan = exec.plan_report(Some(&[vec![3, 17, 5]])).unwrap();
    assert_eq!(plan.nodes[1].placement, Placement::Alias { device: true }, "{plan}");
    assert_eq!(plan.buffers.len(), 2, "input and one intermediate buffer:\n{plan}");
    let got = exec.run(vec![x.clone()]).unwrap();
    let y = wginfer::ops::unary::Unary {
        kind: wginfer::ops::unary::UnaryKind::Tanh,
    };
    let want = wginfer::ops::Op::reference(&y, &[&x]).unwrap()[0]
        .clone()
        .reshape(vec![51, 5])
        .unwrap();
    common::assert_close(
        &got["z"],
        &want,
        common::tolerance(wginfer::ops::Validation::Approximate, DType::F32),
        "tanh+flatten",
    );
}

#[test]
fn cpu_fallback_nodes_transfer_explicitly() {
    let Some(ctx) = gpu() else { return };
    let (model, input, _) = digits();
    let x = input.slice_rows(0, 33).unwrap();
    let cpu = Session::new(&model, Device::Cpu).unwrap();
    let want = cpu.run([("input", x.clone())]).unwrap();
    for (ops, submits) in [(vec!["Softmax"], 1), (vec!["Relu"], 3), (vec!["Linear"], 3)] {
        let options = GpuOptions {
            cpu_ops: ops.iter().map(|s| s.to_string()).collect(),
            ..GpuOptions::default()
        };
        let exec = GpuExecutor::new(model.graph_arc(), model.params_arc(), ctx.clone(), options).unwrap();
        let plan = exec.plan_report(Some(&[vec![33, 64]])).unwrap();
        for n in &plan.nodes {
            if ops.contains(&n.op.as_str()) {
                assert!(matches!(n.placement, Placement::Cpu { .. }), "{plan}");
            }
        }
        assert_eq!(plan.submits, submits, "{ops:?}\n{plan}");
        let got = exec.run(vec![x.clone()]).unwrap();
        compare_probs(
            &got["probabilities"],
            &want["probabilities"],
            &format!("{ops:?} on CPU"),
        );
    }
}

#[test]
fn async_runs_and_concurrent_runs_agree() {
    let Some(_ctx) = gpu() else { return };
    let choice = adapter_choice().expect("an adapter");
    let (model, input, _) = digits();
    let gpu = Arc::new(Session::new(&model, Device::Gpu(choice)).unwrap());
    let cpu = Session::new(&model, Device::Cpu).unwrap();
    let x = input.slice_rows(0, 50).unwrap();
    let want = cpu.run([("input", x.clone())]).unwrap();

    fn is_send<T: Send>(t: T) -> T {
        t
    }
    let fut = is_send(gpu.run_async([("input", x.clone())]));
    let got = pollster::block_on(fut).unwrap();
    compare_probs(&got["probabilities"], &want["probabilities"], "async");

    let threads: Vec<_> = (0..4)
        .map(|_| {
            let gpu = gpu.clone();
            let x = x.clone();
            std::thread::spawn(move || gpu.run([("input", x)]).unwrap())
        })
        .collect();
    for t in threads {
        let got = t.join().unwrap();
        compare_probs(&got["probabilities"], &want["probabilities"], "threaded");
    }
}

#[test]
fn auto_never_picks_a_software_adapter() {
    let adapters = list_adapters();
    for a in &adapters {
        say(&format!("adapter: {a}"));
    }
    let (model, _, _) = digits();
    let s = Session::new(&model, Device::Gpu(AdapterChoice::Auto)).expect("auto session");
    if adapters.iter().all(|a| a.software) {
        assert_eq!(
            s.backend(),
            "cpu",
            "auto must fall back to the CPU backend with only software adapters"
        );
    } else {
        assert!(s.backend().starts_with("gpu"), "{}", s.backend());
    }
}

#[test]
fn a_missing_adapter_is_a_clear_error() {
    let (model, _, _) = digits();
    let e = Session::new(&model, Device::Gpu(AdapterChoice::Name("no-such-adapter-xyz".into()))).unwrap_err();
    let msg = e.to_string();
    assert!(
        msg.contains("no-such-adapter-xyz") && msg.contains("adapters found"),
        "{msg}"
    );
}

#[test]
fn a_value_over_the_binding_limit_falls_back_with_the_reason() {
    let Some(ctx) = gpu() else { return };
    let limit = ctx.limits().max_storage_buffer_binding_size;
    let graph = Graph::new(
        "big",
        vec![ValueInfo {
            name: "x".into(),
            ty: ValueType {
                dtype: DType::F32,
                shape: vec![wginfer::tensor::Dim::Sym("n".into())],
            },
        }],
        vec![ValueInfo {
            name: "y".into(),
            ty: ValueType {
                dtype: DType::F32,
                shape: vec![wginfer::tensor::Dim::Sym("n".into())],
            },
        }],
        vec![],
        vec![Node {
            name: "act".into(),
            op: Arc::new(wginfer::ops::unary::Unary {
                kind: wginfer::ops::unary::UnaryKind::Relu,
            }),
            inputs: vec!["x".into()],
            outputs: vec!["y".into()],
        }],
    )
    .unwrap();
    let exec = GpuExecutor::new(Arc::new(graph), Arc::new(HashMap::new()), ctx, GpuOptions::default()).unwrap();
    // Planning only: nothing of this size is allocated.
    let n = (limit / 4 + 1) as usize;
    let plan = exec.plan_report(Some(&[vec![n]])).unwrap();
    match &plan.nodes[0].placement {
        Placement::Cpu { reason } => assert!(reason.contains("max_storage_buffer_binding_size"), "{reason}"),
        other => panic!("expected a CPU fallback, got {other:?}"),
    }
    assert_eq!(plan.submits, 0, "{plan}");
    let small = exec.plan_report(Some(&[vec![1000]])).unwrap();
    assert!(matches!(small.nodes[0].placement, Placement::Gpu { .. }), "{small}");
}

#[test]
fn profiled_runs_report_kernel_time_within_the_wall_time() {
    let Some(ctx) = gpu() else { return };
    let choice = adapter_choice().expect("an adapter");
    let (model, input, _) = digits();
    let gpu = Session::new(&model, Device::Gpu(choice)).expect("gpu session");
    let plain = gpu.run([("input", input.clone())]).expect("run");
    let t0 = std::time::Instant::now();
    let (out, kernel) = gpu.run_profiled([("input", input.clone())]).expect("profiled run");
    let wall = t0.elapsed();
    // Profiling changes nothing in the results.
    assert_eq!(
        out["probabilities"].as_f32().unwrap(),
        plain["probabilities"].as_f32().unwrap()
    );
    let has = ctx.adapter().timestamp_query;
    match kernel {
        Some(k) => {
            assert!(has, "a kernel time from an adapter without timestamp queries");
            // 4 dispatches over 450 rows take real time, and fit in the run.
            assert!(k > std::time::Duration::ZERO, "kernel time {k:?}");
            assert!(k <= wall, "kernel time {k:?} > wall time {wall:?}");
            say(&format!("digits MLP batch 450: kernel {k:?} of {wall:?} end to end"));
        }
        None => {
            assert!(!has, "the adapter has timestamp queries but no kernel time came back");
            say("no timestamp queries on this adapter: kernel time not measured");
        }
    }
    // The CPU reports none.
    let cpu = Session::new(&model, Device::Cpu).expect("cpu session");
    assert!(cpu.run_profiled([("input", input)]).expect("cpu run").1.is_none());
}

#[test]
fn qlinear_portable_kernels_match_too() {
    // The registry cases ran with the adapter's features (native f16 and
    // dot4I8Packed where available); the fallbacks must agree as well.
    let Some(ctx) = gpu() else { return };
    let options = GpuOptions {
        portable_kernels: true,
        ..GpuOptions::default()
    };
    let def = REGISTRY
        .iter()
        .find(|d| d.op_type == "QLinear")
        .expect("QLinear is registered");
    let mut n = 0;
    for case in (def.cases)() {
        assert!(check_case(&ctx, &case, &options).is_none(), "{}", case.name);
        n += 1;
    }
    // Larger batched shapes: several 64-row tiles, aligned and not; and the
    // edges of qlinear_sg.wgsl's 16 x 512 tiles (K % 32 == 0, M >= 4), which
    // lavapipe takes unless the kernels are portable.
    let mut rng = CaseRng::new(31);
    let mut formats = wginfer::quant::all_formats();
    formats.push(wginfer::quant::WeightFormat::NM { n: 2, m: 4 });
    formats.push(wginfer::quant::WeightFormat::NM { n: 4, m: 8 });
    for f in formats {
        for (m, k, n_out) in [(70, 256, 40), (9, 130, 67), (33, 96, 515), (4, 32, 9)] {
            let case = wginfer::ops::qlinear::case(&mut rng, f, m, k, n_out, true);
            assert!(
                check_case(&ctx, &case, &GpuOptions::default()).is_none(),
                "{}",
                case.name
            );
            assert!(check_case(&ctx, &case, &options).is_none(), "{}", case.name);
            n += 1;
        }
    }
    say(&format!("qlinear: {n} cases on the GPU with portable kernels too"));
}

#[test]
fn w8a8_outlier_channels_match_on_every_kernel() {
    // Outlier channels with activations far outside the other channels'
    // range: the GPU must take each row's scale and zero point from the other
    // channels only (the tolerance is that step's) and add the outliers' f32
    // products. Rows all positive (z = 0), all negative (z = 255), zero but
    // for the outliers (hi == lo) and mixed; the subgroup kernel's tiles and
    // edges (K % 32 == 0, M >= 4), unaligned K and single rows; adapter and
    // portable kernels.
    let Some(ctx) = gpu() else { return };
    let portable = GpuOptions {
        portable_kernels: true,
        ..GpuOptions::default()
    };
    let mut rng = CaseRng::new(0xa8);
    let mut n = 0;
    for outliers in [4u32, 8] {
        let format = wginfer::quant::WeightFormat::W8A8 { outliers };
        for (m, k, n_out) in [(33, 96, 515), (4, 32, 9), (9, 130, 67), (1, 64, 40), (2, 17, 5)] {
            let mut case = wginfer::ops::qlinear::case(&mut rng, format, m, k, n_out, true);
            let idx: Vec<usize> = case.inputs[4].to_f32_vec().iter().map(|&c| c as usize).collect();
            assert_eq!(idx.len(), outliers as usize);
            let mut x = case.inputs[0].to_f32_vec();
            for (i, row) in x.chunks_mut(k).enumerate() {
                for (c, v) in row.iter_mut().enumerate() {
                    if idx.contains(&c) {
                        *v = if (i + c) % 2 == 0 { 40.0 } else { -25.0 };
                    } else {
                        match i % 4 {
                            0 => *v = v.abs(),
                            1 => *v = -v.abs(),
                            2 => *v = 0.0,
                            _ => {}
                        }
                    }
                }
            }
            case.inputs[0] = Tensor::from_vec(vec![m, k], x).expect("x");
            case.name = format!("{} (outlier channels at 40 / -25)", case.name);
            for options in [&GpuOptions::default(), &portable] {
                assert!(check_case(&ctx, &case, options).is_none(), "{}", case.name);
                n += 1;
            }
        }
    }
    say(&format!("w8a8 with outlier channels: {n} cases on the GPU"));
}

#[test]
fn sentence_embedding_ops_run_on_the_gpu() {
    // Gather's indices are i64/i32, so the generic test above allows a CPU
    // fallback for it; these ops must not fall back, on any of their cases.
    let Some(ctx) = gpu() else { return };
    let mut rng = CaseRng::new(0xbe27);
    for name in ["Gather", "Attention", "MaskedMeanPool", "L2Normalize"] {
        let def = REGISTRY.iter().find(|d| d.op_type == name).expect("registered");
        let mut cases = (def.cases)();
        cases.extend((0..8).map(|_| (def.sample)(&mut rng)));
        for case in &cases {
            if let Some(reason) = check_case(&ctx, case, &GpuOptions::default()) {
                panic!("{}: fell back to the CPU: {reason}", case.name);
            }
        }
        say(&format!("{name}: {} cases on the GPU match the reference", cases.len()));
    }
}

/// `(bytes of the parameters some node reads, how many)` of a model.
fn read_param_bytes(model: &Model) -> (u64, u64) {
    let read: std::collections::HashSet<&str> = model
        .graph()
        .nodes()
        .iter()
        .flat_map(|n| n.inputs.iter().map(|s| s.as_str()))
        .collect();
    let mut bytes = 0;
    let mut count = 0;
    for p in model.graph().params() {
        if read.contains(p.name.as_str()) {
            bytes += model.param(&p.name).expect("param").size_in_bytes() as u64;
            count += 1;
        }
    }
    (bytes, count)
}

#[test]
fn quantized_digits_mlp_holds_only_packed_weights_on_the_gpu() {
    let Some(ctx) = gpu() else { return };
    let (model, input, _) = digits();
    let x = input.slice_rows(0, 65).unwrap();
    let (f32_bytes, _) = read_param_bytes(&model);
    let mut formats = wginfer::quant::all_formats();
    formats.push(wginfer::quant::WeightFormat::NM { n: 2, m: 4 });
    for format in formats {
        let opts = wginfer::optimize::QuantizeOptions::new(format);
        let (q, _) = wginfer::optimize::quantize(&model, &opts, |_, _| {}).expect("quantize");
        let exec = GpuExecutor::new(q.graph_arc(), q.params_arc(), ctx.clone(), GpuOptions::default()).unwrap();
        let (packed, tensors) = read_param_bytes(&q);
        let held = exec.param_bytes();
        assert!(
            held >= packed && held <= packed + 3 * tensors,
            "{format}: {held} bytes on the device, packed size {packed} (+ up to 3 padding bytes x {tensors} tensors)"
        );
        assert!(held < f32_bytes, "{format}: {held} bytes held, f32 model {f32_bytes}");
        let plan = exec.plan_report(Some(&[vec![65, 64]])).unwrap();
        assert_eq!(plan.weight_bytes, held);
        for n in &plan.nodes {
            assert!(
                !matches!(n.placement, Placement::Cpu { .. }),
                "{format}: {} on the CPU\n{plan}",
                n.node
            );
        }
        // Same answers as the quantized model on the CPU.
        let cpu = Session::new(&q, Device::Cpu).unwrap();
        let want = cpu.run([("input", x.clone())]).unwrap();
        let got = exec.run(vec![x.clone()]).unwrap();
        let (g, c) = (got["probabilities"].to_f32_vec(), want["probabilities"].to_f32_vec());
        let worst = g.iter().zip(&c).fold(0.0f32, |m, (a, b)| m.max((a - b).abs()));
        let tol = if matches!(format, wginfer::quant::WeightFormat::W8A8 { .. }) {
            1e-3
        } else {
            1e-5
        };
        assert!(worst <= tol, "{format}: max |Δprob| {worst:e}");
        say(&format!(
            "{format}: {held} weight bytes on the GPU (f32: {f32_bytes}), max |Δprob| vs CPU {worst:.1e}"
        ));
    }
}

#[test]
fn pruned_masks_stay_on_the_host_and_results_match() {
    // Unstructured pruning zeroes the weights and stores a bit mask beside
    // each; no op reads the mask at run time (the zeroed dense weight is the
    // layer), so it is not uploaded and the plain Linear kernel runs.
    let Some(ctx) = gpu() else { return };
    let (model, input, _) = digits();
    let x = input.slice_rows(0, 40).unwrap();
    let opts = wginfer::optimize::PruneOptions::new(
        wginfer::optimize::PruneMethod::Unstructured(wginfer::optimize::prune::Importance::Magnitude),
        0.7,
    );
    let (pruned, _) = wginfer::optimize::prune(&model, &opts, |_| {}).expect("prune");
    assert!(
        pruned.graph().params().iter().any(|p| p.name.ends_with(".mask")),
        "unstructured pruning stores masks"
    );
    let exec = GpuExecutor::new(pruned.graph_arc(), pruned.params_arc(), ctx, GpuOptions::default()).unwrap();
    let (read, tensors) = read_param_bytes(&pruned);
    assert!(exec.param_bytes() >= read && exec.param_bytes() <= read + 3 * tensors);
    let plan = exec.plan_report(Some(&[vec![40, 64]])).unwrap();
    assert!(
        plan.nodes.iter().all(|n| !matches!(n.placement, Placement::Cpu { .. })),
        "{plan}"
    );
    let want = Session::new(&pruned, Device::Cpu)
        .unwrap()
        .run([("input", x.clone())])
        .unwrap();
    let got = exec.run(vec![x]).unwrap();
    compare_probs(&got["probabilities"], &want["probabilities"], "pruned 70%");
}

#[test]
fn gather_out_of_range_index_is_nan_on_the_gpu() {
    // The device has no error channel: a bad index poisons its row with NaN
    // (the CPU path reports it as an error naming the index and the bound).
    let Some(ctx) = gpu() else { return };
    let data = Tensor::from_vec(vec![3, 2], vec![1.0f32, 2.0, 3.0, 4.0, 5.0, 6.0]).unwrap();
    let def = REGISTRY.iter().find(|d| d.op_type == "Gather").expect("registered");
    let op = (def.build)(&serde_json::from_str(r#"{"axis": 0}"#).unwrap()).unwrap();
    for idx in [
        Tensor::from_vec(vec![4], vec![2i64, 3, -4, -1]).unwrap(),
        Tensor::from_vec(vec![4], vec![2i32, 3, -4, -1]).unwrap(),
        Tensor::from_vec(vec![4], vec![2i64, 1 << 32, -(1 << 32), -1]).unwrap(),
    ] {
        let case = OpCase::new("gather out of range", op.clone(), vec![data.clone(), idx.clone()]);
        assert!(op.cpu(&case.input_refs()).is_err());
        let graph = Arc::new(single_op_graph(&case));
        let exec = GpuExecutor::new(graph, Arc::new(HashMap::new()), ctx.clone(), GpuOptions::default()).unwrap();
        let y = exec.run(case.inputs.clone()).unwrap()["y0"].to_f32_vec();
        assert_eq!(&y[..2], &[5.0, 6.0], "{idx:?}");
        assert!(y[2..6].iter().all(|v| v.is_nan()), "{idx:?}: {y:?}");
        assert_eq!(&y[6..], &[5.0, 6.0], "{idx:?}");
    }
}

#[test]
fn w8a8_integer_part_is_exact() {
    // The tolerance of check_case allows two activation codes of slack per
    // output; the integer part is exact, so on MiniLM's shapes with
    // MiniLM-like rows (a channel 20x the others; rows cut at GELU's minimum,
    // so z is small) nearly every output must equal the reference to float
    // rounding. A few may not where the adapter's division (2.5 ULP in WGSL)
    // puts an activation on the other side of a .5 boundary.
    let Some(ctx) = gpu() else { return };
    let portable = GpuOptions {
        portable_kernels: true,
        ..GpuOptions::default()
    };
    let mut rng = CaseRng::new(77);
    for outliers in [0u32, 8] {
        let format = wginfer::quant::WeightFormat::W8A8 { outliers };
        for (m, k, n_out) in [(64, 384, 384), (40, 1536, 384), (9, 130, 67)] {
            let mut case = wginfer::ops::qlinear::case(&mut rng, format, m, k, n_out, true);
            let mut x = case.inputs[0].to_f32_vec();
            for (i, v) in x.iter_mut().enumerate() {
                if i % k == 7 {
                    *v *= 20.0;
                }
                if (i / k) % 3 == 0 {
                    *v = v.max(-0.17);
                }
            }
            case.inputs[0] = Tensor::from_vec(vec![m, k], x).expect("x");
            let want = case.op.reference(&case.input_refs()).expect("reference")[0].to_f32_vec();
            for options in [&GpuOptions::default(), &portable] {
                let graph = Arc::new(single_op_graph(&case));
                let exec = GpuExecutor::new(graph, Arc::new(HashMap::new()), ctx.clone(), options.clone())
                    .unwrap_or_else(|e| panic!("{}: compile: {e}", case.name));
                let got = exec.run(case.inputs.clone()).expect("run")["y0"].to_f32_vec();
                let off = got
                    .iter()
                    .zip(&want)
                    .filter(|(a, b)| (*a - *b).abs() > 1e-5 * (1.0 + b.abs()))
                    .count();
                assert!(
                    off * 1000 <= got.len(),
                    "{} (portable: {}): {off} of {} outputs differ from the reference by more than float rounding",
                    case.name,
                    options.portable_kernels,
                    got.len()
                );
            }
        }
    }
}
