//! Planning without an adapter: small graphs, a hand-made [`Caps`].
//! Compiled only as the `#[cfg(test)]` module of `plan/mod.rs`.

use std::collections::HashMap;
use std::sync::Arc;

use super::buffers::Buffers;
use super::*;
use crate::graph::{Node, ParamInfo, ValueInfo};
use crate::ops::cast::Cast;
use crate::ops::linear::Linear;
use crate::ops::unary::{Unary, UnaryKind};
use crate::ops::Op;
use crate::tensor::{DType, Tensor, ValueType};

use super::super::kernels::MatmulKernel;

fn target() -> Target {
    Target {
        caps: Caps {
            max_workgroups: 65535,
            software: true,
            matmul: MatmulKernel::Auto,
            backend: "gpu (test)".into(),
            f16: false,
            packed_dot: false,
            subgroups: false,
        },
        adapter: "test".into(),
        adapter_label: "test (none)".into(),
        max_binding: 1 << 27,
        max_buffer: 1 << 28,
        budget: 1 << 30,
        cpu_ops: Vec::new(),
        fuse_activations: true,
    }
}

fn value(name: &str, shape: &[usize]) -> ValueInfo {
    ValueInfo {
        name: name.into(),
        ty: ValueType::known(DType::F32, shape),
    }
}

fn node(name: &str, op: impl Op + 'static, inputs: &[&str], outputs: &[&str]) -> Node {
    Node {
        name: name.into(),
        op: Arc::new(op),
        inputs: inputs.iter().map(|s| s.to_string()).collect(),
        outputs: outputs.iter().map(|s| s.to_string()).collect(),
    }
}

fn act(kind: UnaryKind) -> Unary {
    Unary { kind }
}

struct Case {
    graph: Graph,
    params: HashMap<String, Tensor>,
}

impl Case {
    fn plan(&self, target: Target) -> ShapePlan {
        self.try_plan(target).unwrap()
    }

    fn try_plan(&self, target: Target) -> Result<ShapePlan, Error> {
        let shapes: Vec<Vec<usize>> = self
            .graph
            .inputs()
            .iter()
            .map(|i| i.ty.shape.iter().map(|d| d.known().unwrap_or(1)).collect())
            .collect();
        let gp = GraphPlan::new(&self.graph, &self.params, target);
        gp.for_shapes(&self.graph, &self.params, &shapes)
    }
}

/// x [2, 4] -> fc1 (Linear 4 -> 8) -> relu1 -> fc2 (Linear 8 -> 3) -> y.
fn mlp() -> Case {
    let shapes = [("w1", vec![8, 4]), ("b1", vec![8]), ("w2", vec![3, 8]), ("b2", vec![3])];
    let infos = shapes
        .iter()
        .map(|(n, s)| ParamInfo::plain(*n, DType::F32, s.clone()))
        .collect();
    let params = shapes
        .iter()
        .map(|(n, s)| (n.to_string(), Tensor::zeros(DType::F32, s.clone())))
        .collect();
    let nodes = vec![
        node("fc1", Linear, &["x", "w1", "b1"], &["h"]),
        node("relu1", act(UnaryKind::Relu), &["h"], &["r"]),
        node("fc2", Linear, &["r", "w2", "b2"], &["y"]),
    ];
    let graph = Graph::new(
        "mlp",
        vec![value("x", &[2, 4])],
        vec![value("y", &[2, 3])],
        infos,
        nodes,
    )
    .unwrap();
    Case { graph, params }
}

/// x [4, 16] through four activations in a chain.
fn chain() -> Case {
    let nodes = vec![
        node("n0", act(UnaryKind::Relu), &["x"], &["a"]),
        node("n1", act(UnaryKind::Sigmoid), &["a"], &["b"]),
        node("n2", act(UnaryKind::Tanh), &["b"], &["c"]),
        node("n3", act(UnaryKind::Relu), &["c"], &["d"]),
    ];
    let graph = Graph::new(
        "chain",
        vec![value("x", &[4, 16])],
        vec![value("d", &[4, 16])],
        vec![],
        nodes,
    )
    .unwrap();
    Case {
        graph,
        params: HashMap::new(),
    }
}

/// x [2, 4] -> relu0 -> a cast to i32 (no GPU kernel: a CPU island) ->
/// a cast back to f32 -> relu1 -> d.
fn island() -> Case {
    let nodes = vec![
        node("relu0", act(UnaryKind::Relu), &["x"], &["a"]),
        node("to_int", Cast { to: DType::I32 }, &["a"], &["b"]),
        node("to_float", Cast { to: DType::F32 }, &["b"], &["c"]),
        node("relu1", act(UnaryKind::Relu), &["c"], &["d"]),
    ];
    let graph = Graph::new(
        "island",
        vec![value("x", &[2, 4])],
        vec![value("d", &[2, 4])],
        vec![],
        nodes,
    )
    .unwrap();
    Case {
        graph,
        params: HashMap::new(),
    }
}

fn values(p: &ShapePlan) -> Vec<Vec<&str>> {
    p.report
        .buffers
        .iter()
        .map(|b| b.values.iter().map(String::as_str).collect())
        .collect()
}

#[test]
fn buffers_are_reused_by_lifetime() {
    let p = chain().plan(target());
    // a and b live at once (n1 reads a, writes b): two buffers, taken in turn.
    assert_eq!(values(&p), vec![vec!["x", "b", "d"], vec!["a", "c"]]);
    assert_eq!(p.storages, vec![256, 256]);
    assert_eq!(p.report.peak_intermediate_bytes, 512);
    assert_eq!(p.storage_labels, vec!["x (+2 reused)", "a (+1 reused)"]);
    assert_eq!(p.segments.len(), 1);
    assert_eq!(p.segments[0].uploads, vec![(0, 0)]);
    assert_eq!(p.dispatches.len(), 4);
    let outs: Vec<usize> = p.dispatches.iter().map(|d| d.out).collect();
    assert_eq!(outs, vec![1, 0, 1, 0]);
    assert_eq!(p.dispatches[1].inputs, vec![Res::Storage(1)]);
    assert_eq!(p.outputs, vec![OutputFrom::Host(4)]);
}

#[test]
fn best_fit_then_the_largest_grown() {
    let mut b = Buffers::default();
    let ids: Vec<usize> = [100, 200, 50].iter().map(|&n| b.alloc("v", n, true)).collect();
    assert_eq!(ids, vec![0, 1, 2]);
    for id in ids {
        b.release(id);
    }
    assert_eq!(b.alloc("fits 100", 60, true), 0);
    assert_eq!(b.alloc("fits 200", 150, true), 1);
    // Only the 50-byte buffer is free: it grows.
    assert_eq!(b.alloc("grows", 300, true), 2);
    assert_eq!(b.sizes, vec![100, 200, 300]);
    // Without reuse, a new buffer even when one is free.
    b.release(0);
    assert_eq!(b.alloc("new", 10, false), 3);
    assert_eq!(b.total(), 610);
}

#[test]
fn peak_bytes_of_a_fused_mlp() {
    let p = mlp().plan(target());
    // x [2,4] = 32 B; h [2,8] = 64 B (relu1 writes it in place); y [2,3] =
    // 24 B takes x's dead buffer.
    assert_eq!(values(&p), vec![vec!["x", "y"], vec!["h", "r"]]);
    assert_eq!(p.report.peak_intermediate_bytes, 32 + 64);
    // Weights: (8·4 + 8 + 3·8 + 3) f32.
    assert_eq!(p.report.weight_bytes, 67 * 4);
    assert_eq!((p.report.dispatches, p.report.submits), (2, 1));
    assert_eq!((p.report.uploads, p.report.readbacks), (1, 1));
}

#[test]
fn linear_and_relu_fuse() {
    let p = mlp().plan(target());
    match &p.report.nodes[0].placement {
        Placement::Gpu { fused, .. } => assert_eq!(fused.as_deref(), Some("relu1")),
        other => panic!("fc1: {other:?}"),
    }
    assert_eq!(p.report.nodes[1].placement, Placement::Fused { into: "fc1".into() });
    let act = p.dispatches[0].key.constants.iter().find(|(n, _)| *n == "ACT");
    assert_eq!(act.map(|&(_, v)| f64::from_bits(v)), Some(1.0));

    let unfused = mlp().plan(Target {
        fuse_activations: false,
        ..target()
    });
    assert_eq!(unfused.report.dispatches, 3);
    assert!(matches!(
        unfused.report.nodes[1].placement,
        Placement::Gpu { fused: None, .. }
    ));

    let relu_on_cpu = mlp().plan(Target {
        cpu_ops: vec!["Relu".into()],
        ..target()
    });
    assert!(matches!(
        relu_on_cpu.report.nodes[0].placement,
        Placement::Gpu { fused: None, .. }
    ));
    let Placement::Cpu { reason } = &relu_on_cpu.report.nodes[1].placement else {
        panic!("relu1 should be on the CPU");
    };
    assert_eq!(reason, "Relu forced onto the CPU by the options");
    assert_eq!(relu_on_cpu.report.submits, 2);
}

#[test]
fn a_cpu_island_splits_the_run() {
    let p = island().plan(target());
    let Placement::Cpu { reason } = &p.report.nodes[1].placement else {
        panic!("to_int should be on the CPU: {:?}", p.report.nodes[1]);
    };
    assert!(reason.contains("f32 to i32"), "{reason}");
    for i in [0, 2, 3] {
        assert!(matches!(p.report.nodes[i].placement, Placement::Gpu { .. }), "{i}");
    }
    // Slots: x 0, a 1, b 2, c 3, d 4.
    assert_eq!(p.segments.len(), 2);
    let (s0, s1) = (&p.segments[0], &p.segments[1]);
    assert_eq!(s0.uploads, vec![(0, 0)]);
    assert_eq!(s0.dispatches, 0..1);
    // a is read back before the CPU step, its result uploaded after it.
    assert_eq!(s0.readbacks, vec![Readback { slot: 1, storage: 1 }]);
    assert_eq!(s0.cpu_steps, vec![1]);
    assert_eq!(s1.uploads.len(), 1);
    assert_eq!(s1.uploads[0].0, 2);
    assert_eq!(s1.dispatches, 1..3);
    assert_eq!(s1.readbacks.len(), 1);
    assert_eq!(s1.readbacks[0].slot, 4);
    assert!(s1.cpu_steps.is_empty());
    let r = &p.report;
    assert_eq!((r.dispatches, r.submits, r.uploads, r.readbacks), (3, 2, 2, 2));
}

#[test]
fn too_large_for_a_binding_goes_to_the_cpu() {
    // 40 bytes: x (32 B) binds; h (64 B) and the weight w1 (128 B) do not.
    let p = mlp().plan(Target {
        max_binding: 40,
        ..target()
    });
    let Placement::Cpu { reason } = &p.report.nodes[0].placement else {
        panic!("fc1 should be on the CPU");
    };
    assert!(reason.contains('h') || reason.contains("w1"), "{reason}");
    assert_eq!(p.report.weight_bytes, 8 * 4 + 3 * 4);
}

#[test]
fn report_text() {
    let text = mlp().plan(target()).report.to_string();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines[0], "GPU plan on test (none)");
    assert_eq!(lines[1], "  input x: [2, 4]");
    assert!(
        lines[3].starts_with("  fc1              Linear     [2, 8]           gpu "),
        "{}",
        lines[3]
    );
    assert!(lines[3].ends_with(" + relu1"), "{}", lines[3]);
    assert_eq!(
        lines[4],
        "  relu1            Relu       [2, 8]           gpu, fused into fc1"
    );
    assert!(text.contains("    #0         32 B  x, y\n"), "{text}");
    assert!(text.contains("    #1         64 B  h, r\n"), "{text}");
    assert!(
        text.contains("  weights 268 B | peak intermediate 96 B in 2 buffers\n"),
        "{text}"
    );
    assert!(
        text.ends_with("  per run: 2 dispatches, 1 submits, 1 uploads, 1 read-backs"),
        "{text}"
    );

    let island = island().plan(target()).report.to_string();
    assert!(
        island.contains("Cast       [2, 4]           CPU fallback: "),
        "{island}"
    );
}

#[test]
fn over_max_buffer_size_goes_to_the_cpu() {
    // Bindings may be large, buffers not: the same 40-byte cut as above.
    let p = mlp().plan(Target {
        max_buffer: 40,
        ..target()
    });
    let Placement::Cpu { reason } = &p.report.nodes[0].placement else {
        panic!("fc1 should be on the CPU");
    };
    assert!(reason.contains("max_buffer_size of 40 bytes"), "{reason}");
    assert_eq!(p.report.weight_bytes, 8 * 4 + 3 * 4);
}

#[test]
fn plan_over_the_allocation_budget_is_an_error() {
    // The MLP on the device: weights w1 [8, 4], b1 [8], w2 [3, 8], b2 [3] in
    // f32 are 4·(32 + 8 + 24 + 3) = 268 bytes; intermediate buffers x/y
    // (2·4 floats) and h/r (2·8 floats) 96 bytes; one read-back copy of y
    // (2·3 floats) 24 bytes. 388 in all.
    let total = 4 * (32 + 8 + 24 + 3) + 4 * (8 + 16) + 4 * 6;
    assert_eq!(total, 388);
    assert!(mlp()
        .try_plan(Target {
            budget: total,
            ..target()
        })
        .is_ok());
    let e = mlp()
        .try_plan(Target {
            budget: total - 1,
            ..target()
        })
        .unwrap_err();
    let Error::Gpu(GpuError::OverBudget {
        value, bytes, limit, ..
    }) = &e
    else {
        panic!("{e}");
    };
    assert_eq!((*bytes, *limit), (388, 387));
    assert!(value.contains("`h, r` of 64 bytes"), "{value}");
    assert!(e.to_string().contains("WGINFER_MAX_ALLOC_BYTES"), "{e}");
}

#[test]
fn value_sizes_saturate_instead_of_wrapping() {
    // 2^62 · 8 floats is 2^67 bytes: past u64, so over every limit.
    assert_eq!(size_of(&(DType::F32, vec![1 << 62, 8])), u64::MAX);
    assert_eq!(size_of(&(DType::F32, vec![1 << 62, 0])), 0);
    assert_eq!(size_of(&(DType::F16, vec![3, 5])), 30);
}
