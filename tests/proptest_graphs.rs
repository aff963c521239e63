//! Random graphs built from the op registry: chains and small DAGs of
//! elementwise, unary, MatMul, Reshape, Flatten, Squeeze/Unsqueeze, Transpose,
//! Concat and (Log)Softmax nodes over random shapes (sizes 0 to 5, ranks 0 to
//! 4), with attributes that are valid most of the time and random otherwise,
//! weights as parameters or graph inputs, and NaN, ±inf and ±0 planted in
//! some inputs.
//!
//! For every graph:
//! - nothing panics: an op that rejects its attributes, shape inference that
//!   rejects a node, and a graph that does not build are errors;
//! - `Graph::new` fails exactly when some node's shape inference fails;
//! - where inference succeeds, each op's reference computes an output of the
//!   inferred type (the test runs the references node by node itself: an
//!   interpreter independent of the executors);
//! - the `cpu-reference` session equals that interpreter bit for bit, and the
//!   `cpu` session (fast kernels, packed weights, buffer reuse) equals it
//!   within the tolerance table (the loosest class of the chain's nodes,
//!   times the node count, atol also times the largest intermediate
//!   magnitude), for the final value and one intermediate value also exposed
//!   as an output. NaN must match NaN and infinities exactly. Chains whose
//!   answer hangs on rounding noise (intermediates past 1e3, Log, Sqrt,
//!   Reciprocal or Div reading a value near 0) are checked for shapes only.

mod common;

use std::collections::HashMap;
use std::sync::Arc;

use common::{assert_close, tolerance, Tolerance};
use proptest::prelude::*;
use serde_json::json;
use wginfer::graph::{Graph, Node, ParamInfo, ValueInfo};
use wginfer::ops::{lookup, Attrs, CaseRng, Op, Validation};
use wginfer::tensor::ValueType;
use wginfer::{DType, Device, Model, Session, Tensor};

/// The unary ops a step may pick.
const UNARY: [&str; 14] = [
    "Relu",
    "Sigmoid",
    "Tanh",
    "Gelu",
    "Silu",
    "LeakyRelu",
    "Erf",
    "Neg",
    "Abs",
    "Exp",
    "Log",
    "Sqrt",
    "Reciprocal",
    "HardSwish",
];

/// The kinds of step (the first number of a proptest step).
const STEP_KINDS: u8 = 10;

/// A value of the graph as the test's interpreter knows it.
#[derive(Clone)]
struct Val {
    name: String,
    ty: ValueType,
    data: Tensor,
}

/// One step: an op type, its attributes and its inputs (the first is the
/// current value unless `inputs` says otherwise).
struct Step {
    op_type: &'static str,
    attrs: Attrs,
    inputs: Vec<Operand>,
}

/// Where a node input comes from.
enum Operand {
    /// A value already in the graph (index into the interpreter's values).
    Value(usize),
    /// A new graph input fed with this tensor.
    Input(Tensor),
    /// A new parameter (weight) holding this tensor.
    Param(Tensor),
}

/// A graph under construction, with the interpreter's values.
#[derive(Default)]
struct Builder {
    inputs: Vec<ValueInfo>,
    feeds: Vec<(String, Tensor)>,
    params: Vec<ParamInfo>,
    weights: HashMap<String, Tensor>,
    nodes: Vec<Node>,
    vals: Vec<Val>,
    /// The loosest validation class of the nodes.
    worst: Option<Validation>,
    /// A node's shape inference failed: the graph must not build.
    invalid: bool,
    /// Log, Sqrt, Reciprocal or a Div's divisor read a value near 0, where
    /// the answer hangs on the sign of what may be rounding noise (a
    /// LogSoftmax gives `-4e-14` or `0`; a matmul's `0 · w` sums to `+0` or
    /// `-0`): NaN or -inf, +inf or -inf. Values are not compared then.
    edge: bool,
}

fn attrs(v: serde_json::Value) -> Attrs {
    match v {
        serde_json::Value::Object(m) => m,
        _ => Attrs::new(),
    }
}

fn shape_of(v: &Val) -> Vec<usize> {
    v.data.shape().to_vec()
}

/// 1 in `n`.
fn one_in(rng: &mut CaseRng, n: u64) -> bool {
    rng.next_u64().is_multiple_of(n)
}

/// IEEE special values, planted in some tensors.
const SPECIAL: [f32; 5] = [f32::NAN, f32::INFINITY, f32::NEG_INFINITY, 0.0, -0.0];

/// Uniform values in `[-r, r)`; one tensor in six has up to three of them
/// replaced by special values.
fn data(rng: &mut CaseRng, shape: &[usize], r: f32) -> Tensor {
    let t = rng.tensor(shape, -r, r);
    let mut v = t.to_f32_vec();
    if v.is_empty() || !one_in(rng, 6) {
        return t;
    }
    for _ in 0..rng.range(1, 3) {
        let i = rng.range(0, v.len() - 1);
        v[i] = SPECIAL[rng.range(0, SPECIAL.len() - 1)];
    }
    Tensor::from_vec(shape.to_vec(), v).unwrap_or_else(|e| panic!("{e}"))
}

/// A random shape of rank 0..=3 with sizes 0..=5 (for the deliberately
/// random operands).
fn random_shape(rng: &mut CaseRng) -> Vec<usize> {
    (0..rng.range(0, 3)).map(|_| rng.range(0, 5)).collect()
}

/// An operand that broadcasts against `s`: a suffix of it with some sizes
/// set to 1 (or, rarely, a random shape).
fn broadcast_operand(rng: &mut CaseRng, s: &[usize]) -> Vec<usize> {
    if one_in(rng, 10) {
        return random_shape(rng);
    }
    let keep = rng.range(0, s.len());
    s[s.len() - keep..]
        .iter()
        .map(|&d| if one_in(rng, 3) { 1 } else { d })
        .collect()
}

/// An axis in `[-rank, rank)` (or, rarely, anywhere in `[-6, 6]`).
fn axis(rng: &mut CaseRng, rank: usize) -> i64 {
    if rank == 0 || one_in(rng, 8) {
        return rng.range(0, 12) as i64 - 6;
    }
    rng.range(0, 2 * rank - 1) as i64 - rank as i64
}

/// A reshape target with the same element count as `s`: adjacent sizes
/// merged, sizes split, a `-1` or a `0` (copy) here and there; rarely random.
fn reshape_target(rng: &mut CaseRng, s: &[usize]) -> Vec<i64> {
    if one_in(rng, 8) {
        return (0..rng.range(0, 4)).map(|_| rng.range(0, 8) as i64 - 1).collect();
    }
    let mut t: Vec<i64> = s.iter().map(|&d| d as i64).collect();
    for _ in 0..rng.range(0, 2) {
        if t.len() >= 2 && one_in(rng, 2) {
            let i = rng.range(0, t.len() - 2);
            let merged = t[i] * t[i + 1];
            t.splice(i..i + 2, [merged]);
        } else if let Some(i) = (!t.is_empty()).then(|| rng.range(0, t.len() - 1)) {
            let d = t[i];
            let f = (1..=d.max(1)).filter(|f| d % f == 0).nth(rng.range(0, 2)).unwrap_or(1);
            t.splice(i..i + 1, [f, if f == 0 { 0 } else { d / f }]);
        }
    }
    if !t.is_empty() && one_in(rng, 3) {
        let i = rng.range(0, t.len() - 1);
        t[i] = -1;
    }
    // A 0 copies the input's size at its position (where no size is 0).
    let same: Vec<usize> = (0..t.len().min(s.len())).filter(|&i| t[i] == s[i] as i64).collect();
    if !same.is_empty() && !s.contains(&0) && one_in(rng, 4) {
        t[same[rng.range(0, same.len() - 1)]] = 0;
    }
    t
}

/// A permutation of `0..rank` (or, rarely, random integers).
fn permutation(rng: &mut CaseRng, rank: usize) -> Vec<i64> {
    if one_in(rng, 8) {
        return (0..rng.range(0, 4)).map(|_| rng.range(0, 6) as i64 - 2).collect();
    }
    let mut p: Vec<i64> = (0..rank as i64).collect();
    for i in (1..p.len()).rev() {
        p.swap(i, rng.range(0, i));
    }
    p
}

/// An earlier value of the same shape as `cur`, or `cur` itself.
fn same_shape_value(rng: &mut CaseRng, b: &Builder, cur: usize) -> usize {
    let s = shape_of(&b.vals[cur]);
    let same: Vec<usize> = (0..b.vals.len()).filter(|&i| shape_of(&b.vals[i]) == s).collect();
    same[rng.range(0, same.len() - 1)]
}

/// The step of `kind` applied to the current value `cur`.
fn step(kind: u8, rng: &mut CaseRng, b: &Builder, cur: usize) -> Step {
    let s = shape_of(&b.vals[cur]);
    let r = s.len();
    let one = |op_type, a| Step {
        op_type,
        attrs: attrs(a),
        inputs: vec![Operand::Value(cur)],
    };
    match kind {
        0 => {
            let op = UNARY[rng.range(0, UNARY.len() - 1)];
            let a = match op {
                "LeakyRelu" => json!({ "alpha": rng.uniform(0.0, 0.5) }),
                "Gelu" if one_in(rng, 2) => json!({ "approximate": "tanh" }),
                _ => json!({}),
            };
            one(op, a)
        }
        1 | 2 => {
            let op = ["Add", "Mul", "Sub", "Div"][rng.range(0, 3)];
            let other = if kind == 2 {
                Operand::Value(same_shape_value(rng, b, cur))
            } else {
                let shape = broadcast_operand(rng, &s);
                Operand::Input(data(rng, &shape, 2.0))
            };
            let mut inputs = vec![Operand::Value(cur), other];
            if one_in(rng, 3) {
                inputs.reverse();
            }
            Step {
                op_type: op,
                attrs: Attrs::new(),
                inputs,
            }
        }
        3 => {
            let k = if r == 0 || one_in(rng, 8) {
                rng.range(0, 5)
            } else {
                s[r - 1]
            };
            let mut w = vec![k, rng.range(1, 5)];
            if r > 2 && one_in(rng, 3) {
                w.splice(0..0, s[..r - 2].iter().copied());
            }
            let w = data(rng, &w, 1.0);
            let w = if one_in(rng, 4) {
                Operand::Input(w)
            } else {
                Operand::Param(w)
            };
            Step {
                op_type: "MatMul",
                attrs: Attrs::new(),
                inputs: vec![Operand::Value(cur), w],
            }
        }
        4 => {
            let t = reshape_target(rng, &s);
            // A 0 that is a size of zero (rather than a copy) needs allowzero.
            let allowzero = s.contains(&0) && t.contains(&0) && !t.contains(&-1);
            one("Reshape", json!({ "shape": t, "allowzero": i64::from(allowzero) }))
        }
        5 => one("Transpose", json!({ "perm": permutation(rng, r) })),
        6 => {
            let op = if one_in(rng, 2) { "Softmax" } else { "LogSoftmax" };
            one(op, json!({ "axis": axis(rng, r) }))
        }
        7 => one(
            "Flatten",
            json!({ "axis": rng.range(0, r) as i64 - i64::from(one_in(rng, 4)) }),
        ),
        8 => {
            if one_in(rng, 2) {
                one("Unsqueeze", json!({ "axes": [axis(rng, r + 1)] }))
            } else {
                let ones: Vec<i64> = (0..r).filter(|&i| s[i] == 1).map(|i| i as i64).collect();
                let axes = if one_in(rng, 4) { vec![axis(rng, r)] } else { ones };
                one("Squeeze", json!({ "axes": axes }))
            }
        }
        _ => Step {
            op_type: "Concat",
            attrs: attrs(json!({ "axis": axis(rng, r) })),
            inputs: vec![Operand::Value(cur), Operand::Value(same_shape_value(rng, b, cur))],
        },
    }
}

impl Builder {
    fn new(x: Tensor) -> Self {
        let mut b = Builder::default();
        let i = b.operand(Operand::Input(x));
        debug_assert_eq!(i, 0);
        b
    }

    /// The value index of an operand, adding a graph input or a parameter.
    fn operand(&mut self, o: Operand) -> usize {
        let (name, data) = match o {
            Operand::Value(i) => return i,
            Operand::Input(t) => {
                let name = format!("x{}", self.inputs.len());
                let ty = ValueType::known(t.dtype(), t.shape());
                self.inputs.push(ValueInfo { name: name.clone(), ty });
                self.feeds.push((name.clone(), t.clone()));
                (name, t)
            }
            Operand::Param(t) => {
                let name = format!("w{}", self.params.len());
                self.params
                    .push(ParamInfo::plain(&name, DType::F32, t.shape().to_vec()));
                self.weights.insert(name.clone(), t.clone());
                (name, t)
            }
        };
        self.vals.push(Val {
            name,
            ty: ValueType::known(data.dtype(), data.shape()),
            data,
        });
        self.vals.len() - 1
    }

    /// Adds the node of `step`; its output becomes the current value.
    /// `Ok(None)` when the op rejects its attributes (no node is added),
    /// `Err(())` when shape inference rejects the node (it is added, and the
    /// graph must then fail to build).
    fn add(&mut self, step: Step) -> Result<Option<usize>, ()> {
        let Some(def) = lookup(step.op_type) else {
            panic!("{} is not registered", step.op_type)
        };
        let op: Arc<dyn Op> = match (def.build)(&step.attrs) {
            Ok(op) => op,
            Err(_) => return Ok(None),
        };
        let ins: Vec<usize> = step.inputs.into_iter().map(|o| self.operand(o)).collect();
        let name = format!("v{}", self.nodes.len());
        self.nodes.push(Node {
            name: format!("n{}", self.nodes.len()),
            op: op.clone(),
            inputs: ins.iter().map(|&i| self.vals[i].name.clone()).collect(),
            outputs: vec![name.clone()],
        });
        let types: Vec<ValueType> = ins.iter().map(|&i| self.vals[i].ty.clone()).collect();
        let Ok(out) = op.infer(&types) else {
            self.invalid = true;
            return Err(());
        };
        let data: Vec<&Tensor> = ins.iter().map(|&i| &self.vals[i].data).collect();
        let domain = match op.op_type() {
            "Log" | "Sqrt" | "Reciprocal" => data.first(),
            "Div" => data.get(1),
            _ => None,
        };
        self.edge |= domain.is_some_and(|t| t.to_f32_vec().iter().any(|v| v.abs() < EDGE));
        // An infinity times a value near 0: rounding upstream decides
        // between ±0 and a tiny value, so between NaN and an infinity.
        if matches!(op.op_type(), "MatMul" | "Mul") && data.len() == 2 {
            let inf = |t: &Tensor| t.to_f32_vec().iter().any(|v| v.is_infinite());
            let near0 = |t: &Tensor| t.to_f32_vec().iter().any(|v| v.abs() < EDGE);
            self.edge |= (inf(data[0]) && near0(data[1])) || (inf(data[1]) && near0(data[0]));
        }
        let what = format!("{} {:?} on {:?}", op.op_type(), op.attrs(), types);
        let got = op
            .reference(&data)
            .unwrap_or_else(|e| panic!("{what}: inferred {out:?} but the reference failed: {e}"));
        assert_eq!(out.len(), 1, "{what}");
        assert_eq!(
            out[0],
            ValueType::known(got[0].dtype(), got[0].shape()),
            "{what}: inferred type"
        );
        self.worst = Some(match (self.worst, op.validation()) {
            (Some(Validation::Approximate), _) | (_, Validation::Approximate) => Validation::Approximate,
            (Some(Validation::Rounding), _) | (_, Validation::Rounding) => Validation::Rounding,
            _ => Validation::Exact,
        });
        self.vals.push(Val {
            name,
            ty: out[0].clone(),
            data: got[0].clone(),
        });
        Ok(Some(self.vals.len() - 1))
    }
}

/// The tolerance for values computed through `nodes` nodes of the loosest
/// class `worst`, whose intermediate values reach `scale` in magnitude:
/// each node's error adds, and a node's absolute error grows with the size
/// of what it reads.
fn chain_tolerance(worst: Validation, nodes: usize, scale: f32) -> Tolerance {
    let t = tolerance(worst, DType::F32);
    let n = nodes as f32;
    Tolerance {
        atol: t.atol * n * scale.max(1.0),
        rtol: t.rtol * n,
    }
}

/// Intermediate values above this make the chain ill-conditioned (a
/// difference of large values, the reciprocal of a tiny one): only shapes
/// are compared then.
const MAX_SCALE: f32 = 1e3;

/// How near 0 a value read by Log, Sqrt, Reciprocal or Div (or multiplied
/// with an infinity) is "near 0".
const EDGE: f32 = 1e-2;

fn check(shape: Vec<usize>, steps: &[(u8, u64)], data_seed: u64, extra: usize) {
    let mut rng = CaseRng::new(data_seed);
    let x = data(&mut rng, &shape, 2.0);
    let mut b = Builder::new(x);
    let mut cur = 0;
    for &(kind, seed) in steps {
        let mut srng = CaseRng::new(seed);
        let s = step(kind, &mut srng, &b, cur);
        match b.add(s) {
            Ok(Some(v)) => cur = v,
            Ok(None) => {}
            Err(()) => break,
        }
    }
    let mut outputs = vec![cur];
    let produced: Vec<usize> = (1..b.vals.len()).filter(|&i| b.vals[i].name.starts_with('v')).collect();
    if let Some(&i) = produced.get(extra % produced.len().max(1)) {
        if i != cur {
            outputs.push(i);
        }
    }
    let out_infos: Vec<ValueInfo> = outputs
        .iter()
        .map(|&i| ValueInfo {
            name: b.vals[i].name.clone(),
            ty: b.vals[i].ty.clone(),
        })
        .collect();
    let graph = Graph::new("random", b.inputs.clone(), out_infos, b.params.clone(), b.nodes.clone());
    if b.invalid {
        assert!(graph.is_err(), "a node failed shape inference but the graph built");
        return;
    }
    let graph = graph.unwrap_or_else(|e| panic!("every node inferred but the graph failed: {e}"));
    let model = Model::new(graph, b.weights.clone()).unwrap_or_else(|e| panic!("model: {e}"));
    let run = |device: Device| {
        let session = Session::new(&model, device.clone()).unwrap_or_else(|e| panic!("{device:?}: {e}"));
        session
            .run(b.feeds.clone())
            .unwrap_or_else(|e| panic!("{device:?}: run failed: {e}"))
    };
    let (fast, reference) = (run(Device::Cpu), run(Device::CpuReference));
    let scale = b
        .vals
        .iter()
        .flat_map(|v| v.data.to_f32_vec())
        .filter(|v| v.is_finite())
        .fold(0.0f32, |m, v| m.max(v.abs()));
    let tol = chain_tolerance(b.worst.unwrap_or(Validation::Exact), b.nodes.len(), scale);
    for &i in &outputs {
        let v = &b.vals[i];
        for (device, got) in [("cpu-reference", &reference[&v.name]), ("cpu", &fast[&v.name])] {
            assert_eq!(
                ValueType::known(got.dtype(), got.shape()),
                v.ty,
                "{device}: {} has the inferred type",
                v.name
            );
        }
        let exact = tolerance(Validation::Exact, DType::F32);
        assert_close(
            &reference[&v.name],
            &v.data,
            exact,
            &format!("cpu-reference {}", v.name),
        );
        if scale <= MAX_SCALE && !b.edge {
            assert_close(&fast[&v.name], &v.data, tol, &format!("cpu {}", v.name));
        }
    }
}

fn dim() -> impl Strategy<Value = usize> {
    prop_oneof![9 => 1..=5usize, 1 => Just(0usize)]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 10_000, ..ProptestConfig::default() })]

    #[test]
    fn random_graphs_infer_run_and_agree(
        shape in prop_oneof![1 => Just(vec![]), 9 => prop::collection::vec(dim(), 1..=4)],
        steps in prop::collection::vec((0..STEP_KINDS, any::<u64>()), 1..=7),
        data_seed in any::<u64>(),
        extra in any::<usize>(),
    ) {
        check(shape, &steps, data_seed, extra);
    }
}
