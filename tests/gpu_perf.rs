//! Timing loops for the GPU backend (ignored by default; run with
//! `cargo test --release --test gpu_perf -- --ignored --nocapture`).
//! The criterion benches live in benches/; these print GPU timings
//! (matmul GFLOP/s and scaling, the digits MLP's latency) on whatever
//! adapter is present.

mod common;

use std::collections::HashMap;
use std::io::Write;
use std::sync::Arc;
use std::time::Instant;

use wginfer::backend::gpu::{list_adapters, AdapterChoice, GpuContext, GpuExecutor, GpuOptions, MatmulKernel};
use wginfer::graph::{Graph, Node, ParamInfo, ValueInfo};
use wginfer::ops::CaseRng;
use wginfer::tensor::ValueType;
use wginfer::{DType, Device, Model, Session, Tensor};

fn say(line: &str) {
    let _ = writeln!(std::io::stderr(), "{line}");
}

fn choice() -> Option<AdapterChoice> {
    if let Ok(s) = std::env::var("WGINFER_TEST_ADAPTER") {
        return s.parse().ok();
    }
    let a = list_adapters().into_iter().next();
    if a.is_none() {
        common::skip_or_fail("WGINFER_REQUIRE_GPU", "no wgpu adapter");
    }
    a.map(|a| AdapterChoice::Name(a.name))
}

/// `x [n, n]` through `depth` MatMuls by one `[n, n]` weight: one submit.
fn matmul_chain(n: usize, depth: usize) -> (Graph, HashMap<String, Tensor>) {
    let mut rng = CaseRng::new(1);
    let w = rng.tensor(&[n, n], -0.05, 0.05);
    let ty = ValueType::known(DType::F32, &[n, n]);
    let nodes = (0..depth)
        .map(|i| Node {
            name: format!("mm{i}"),
            op: Arc::new(wginfer::ops::matmul::MatMul),
            inputs: vec![if i == 0 { "x".into() } else { format!("v{}", i - 1) }, "w".into()],
            outputs: vec![if i + 1 == depth { "y".into() } else { format!("v{i}") }],
        })
        .collect();
    let g = Graph::new(
        "chain",
        vec![ValueInfo {
            name: "x".into(),
            ty: ty.clone(),
        }],
        vec![ValueInfo { name: "y".into(), ty }],
        vec![ParamInfo::plain("w", DType::F32, vec![n, n])],
        nodes,
    )
    .expect("chain graph");
    (g, HashMap::from([("w".to_string(), w)]))
}

#[test]
#[ignore]
fn matmul_1024_gflops() {
    let Some(choice) = choice() else { return };
    let ctx = GpuContext::new(&choice).expect("adapter");
    let n = 1024;
    let x = CaseRng::new(2).tensor(&[n, n], -1.0, 1.0);
    for kernel in [MatmulKernel::Blocked, MatmulKernel::Tiled] {
        for depth in [1usize, 4] {
            let (g, params) = matmul_chain(n, depth);
            let options = GpuOptions {
                matmul: kernel,
                ..GpuOptions::default()
            };
            let exec = GpuExecutor::new(Arc::new(g), Arc::new(params), ctx.clone(), options).unwrap();
            exec.run(vec![x.clone()]).unwrap(); // warm up: pipelines, buffers
            let reps = 3;
            let t = Instant::now();
            for _ in 0..reps {
                exec.run(vec![x.clone()]).unwrap();
            }
            let secs = t.elapsed().as_secs_f64() / reps as f64;
            let flops = 2.0 * (n * n * n * depth) as f64;
            say(&format!(
                "{} {kernel:?} matmul {n}^3 x{depth} in one submit: {:.1} ms/run, {:.1} GFLOP/s (uploads and read-back included)",
                ctx.adapter().name,
                secs * 1e3,
                flops / secs / 1e9
            ));
        }
    }
    let (g, params) = matmul_chain(n, 1);
    let model = Model::new(g, params).unwrap();
    let cpu = Session::new(&model, Device::Cpu).unwrap();
    cpu.run([("x", x.clone())]).unwrap();
    let t = Instant::now();
    for _ in 0..3 {
        cpu.run([("x", x.clone())]).unwrap();
    }
    let secs = t.elapsed().as_secs_f64() / 3.0;
    say(&format!(
        "CPU backend matmul {n}^3: {:.1} ms, {:.1} GFLOP/s",
        secs * 1e3,
        2.0 * (n * n * n) as f64 / secs / 1e9
    ));
}

#[test]
#[ignore]
fn digits_mlp_latency() {
    let Some(choice) = choice() else { return };
    let model = Model::load(common::root("models/digits-mlp/model.safetensors")).unwrap();
    let data = wginfer::model::load_tensors(common::root("models/digits-mlp/digits_test.safetensors")).unwrap();
    let input = data.iter().find(|(k, _)| k == "input").unwrap().1.clone();
    let gpu = Session::new(&model, Device::Gpu(choice)).unwrap();
    let cpu = Session::new(&model, Device::Cpu).unwrap();
    for rows in [1usize, 450] {
        let x = input.slice_rows(0, rows).unwrap();
        let plan = gpu.gpu_plan(Some(&[vec![rows, 64]])).unwrap().unwrap();
        for (name, s) in [("gpu", &gpu), ("cpu", &cpu)] {
            for _ in 0..5 {
                s.run([("input", x.clone())]).unwrap();
            }
            let reps = 200;
            let t = Instant::now();
            for _ in 0..reps {
                s.run([("input", x.clone())]).unwrap();
            }
            let us = t.elapsed().as_secs_f64() / reps as f64 * 1e6;
            say(&format!(
                "digits MLP batch {rows} on {name} ({}): {us:.0} µs/run",
                s.backend()
            ));
        }
        say(&format!(
            "  per run: {} dispatches, {} submits, peak intermediate {} B",
            plan.dispatches, plan.submits, plan.peak_intermediate_bytes
        ));
    }
}

/// Where the time of one matmul goes: the same output size with growing K.
#[test]
#[ignore]
fn matmul_scaling() {
    let Some(choice) = choice() else { return };
    let ctx = GpuContext::new(&choice).expect("adapter");
    let mut rng = CaseRng::new(3);
    for (m, k, n) in [
        (1024, 4, 1024),
        (1024, 256, 1024),
        (64, 1024, 1024),
        (256, 1024, 1024),
        (512, 1024, 1024),
        (1024, 1024, 1024),
        (1024, 512, 1024),
    ] {
        let x = rng.tensor(&[m, k], -1.0, 1.0);
        let w = rng.tensor(&[k, n], -1.0, 1.0);
        let g = Graph::new(
            "mm",
            vec![ValueInfo {
                name: "x".into(),
                ty: ValueType::known(DType::F32, &[m, k]),
            }],
            vec![ValueInfo {
                name: "y".into(),
                ty: ValueType::known(DType::F32, &[m, n]),
            }],
            vec![ParamInfo::plain("w", DType::F32, vec![k, n])],
            vec![Node {
                name: "mm".into(),
                op: Arc::new(wginfer::ops::matmul::MatMul),
                inputs: vec!["x".into(), "w".into()],
                outputs: vec!["y".into()],
            }],
        )
        .unwrap();
        let exec = GpuExecutor::new(
            Arc::new(g),
            Arc::new(HashMap::from([("w".to_string(), w)])),
            ctx.clone(),
            GpuOptions::default(),
        )
        .unwrap();
        let plan = exec.plan_report(Some(&[vec![m, k]])).unwrap();
        exec.run(vec![x.clone()]).unwrap();
        let t = Instant::now();
        exec.run(vec![x.clone()]).unwrap();
        let s = t.elapsed().as_secs_f64();
        say(&format!(
            "{m}x{k}x{n}: {:.1} ms, {:.2} GFLOP/s, {:?}",
            s * 1e3,
            2.0 * (m * k * n) as f64 / s / 1e9,
            plan.nodes[0].placement
        ));
    }
}
