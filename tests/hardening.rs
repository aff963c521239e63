//! Sizes and files taken from user data: element counts that overflow, files
//! that are not regular files, external data outside the model's directory.
//! Each must be a clear error, never a panic, an abort or a wrong success.

mod common;

use std::path::Path;

use wginfer::model::onnx::proto::{data_type, StringStringEntryProto, TensorProto, DATA_LOCATION_EXTERNAL};
use wginfer::model::onnx::tensor_from_proto;
use wginfer::Tensor;

fn external(name: &str, dims: &[i64], location: &str, offset: Option<u64>, length: Option<u64>) -> TensorProto {
    let mut entries = vec![StringStringEntryProto {
        key: "location".into(),
        value: location.into(),
    }];
    if let Some(o) = offset {
        entries.push(StringStringEntryProto {
            key: "offset".into(),
            value: o.to_string(),
        });
    }
    if let Some(l) = length {
        entries.push(StringStringEntryProto {
            key: "length".into(),
            value: l.to_string(),
        });
    }
    TensorProto {
        name: name.into(),
        dims: dims.to_vec(),
        data_type: data_type::FLOAT,
        external_data: entries,
        data_location: DATA_LOCATION_EXTERNAL,
        ..Default::default()
    }
}

fn err_text(t: &TensorProto, dir: &Path) -> String {
    match tensor_from_proto(t, dir) {
        Ok(x) => panic!("`{}` loaded as {:?} {:?}", t.name, x.dtype(), x.shape()),
        Err(e) => e.to_string(),
    }
}

#[test]
fn external_data_stays_inside_the_model_directory() {
    let dir = tempfile::tempdir().unwrap();
    let vals = [1.5f32, -2.0, 3.25, 0.5];
    let bytes: Vec<u8> = vals.iter().flat_map(|v| v.to_le_bytes()).collect();
    let mut file = vec![0u8; 8];
    file.extend_from_slice(&bytes);
    std::fs::write(dir.path().join("w.bin"), &file).unwrap();

    // The allowed case: a range of a regular file in the directory.
    let t = tensor_from_proto(&external("w", &[2, 2], "w.bin", Some(8), Some(16)), dir.path()).unwrap();
    assert_eq!(t.shape(), &[2, 2]);
    assert_eq!(t.as_f32().unwrap(), &vals);
    let t = tensor_from_proto(&external("w", &[2], "./w.bin", Some(8), None), dir.path()).unwrap();
    assert_eq!(t.as_f32().unwrap(), &vals[..2]);

    let e = err_text(&external("abs", &[4], "/dev/zero", None, None), dir.path());
    assert!(e.contains("relative path"), "{e}");
    let e = err_text(&external("up", &[4], "../w.bin", None, None), dir.path());
    assert!(e.contains("no `..`"), "{e}");
    let e = err_text(&external("range", &[4], "w.bin", Some(16), None), dir.path());
    assert!(e.contains("has 24 bytes"), "{e}");
    let e = err_text(&external("huge", &[1 << 40], "w.bin", None, None), dir.path());
    assert!(e.contains("has 24 bytes"), "{e}");
    std::fs::create_dir(dir.path().join("sub")).unwrap();
    let e = err_text(&external("dir", &[4], "sub", None, None), dir.path());
    assert!(e.contains("not a regular file"), "{e}");
    #[cfg(unix)]
    {
        std::os::unix::fs::symlink("/dev/zero", dir.path().join("zero")).unwrap();
        let e = err_text(&external("link", &[4], "zero", None, None), dir.path());
        assert!(e.contains("out of the model's directory"), "{e}");
    }
    let e = err_text(&external("missing", &[4], "nothing.bin", None, None), dir.path());
    assert!(e.contains("nothing.bin"), "{e}");
}

#[test]
fn initializers_whose_dims_overflow_are_errors() {
    for dims in [vec![1i64 << 32, 1 << 32], vec![64, 1 << 62], vec![1 << 62, 4]] {
        let t = TensorProto {
            name: "big".into(),
            dims: dims.clone(),
            data_type: data_type::FLOAT,
            ..Default::default()
        };
        let e = err_text(&t, Path::new("."));
        assert!(e.contains("overflows"), "{dims:?}: {e}");
    }
    // Declared data must be present: a small shape with no data is refused too.
    let t = TensorProto {
        name: "empty".into(),
        dims: vec![2, 3],
        data_type: data_type::FLOAT,
        ..Default::default()
    };
    let e = err_text(&t, Path::new("."));
    assert!(e.contains('6'), "{e}");
}

#[test]
fn tensors_whose_shapes_overflow_are_errors() {
    let e = Tensor::from_vec(vec![1usize << 63, 64], Vec::<f32>::new()).unwrap_err();
    assert!(e.to_string().contains("overflows"), "{e}");
    let e = Tensor::from_vec(vec![7, 5_270_498_306_774_157_606], vec![0f32; 10]).unwrap_err();
    assert!(e.to_string().contains("overflows"), "{e}");
}

#[test]
fn data_files_must_be_regular_files() {
    for p in ["/dev/zero", "/dev/null"] {
        let e = wginfer::model::load_tensors(p).unwrap_err();
        assert!(format!("{e:#}").contains("not a regular file"), "{p}: {e:#}");
        let e = wginfer::Model::load(p).unwrap_err();
        assert!(format!("{e:#}").contains("not a regular file"), "{p}: {e:#}");
    }
}

/// `y = a · b` with `a [n, 1]` and `b [1, n]` as symbolic-size inputs: small
/// inputs, an `n × n` output.
fn outer_product_model() -> wginfer::Model {
    use std::sync::Arc;
    use wginfer::graph::{Graph, Node, ValueInfo};
    use wginfer::tensor::{DType, Dim, ValueType};
    let ty = |a: Dim, b: Dim| ValueType {
        dtype: DType::F32,
        shape: vec![a, b],
    };
    let n = || Dim::Sym("n".into());
    let g = Graph::new(
        "outer",
        vec![
            ValueInfo {
                name: "a".into(),
                ty: ty(n(), Dim::Known(1)),
            },
            ValueInfo {
                name: "b".into(),
                ty: ty(Dim::Known(1), Dim::Sym("m".into())),
            },
        ],
        vec![ValueInfo {
            name: "y".into(),
            ty: ty(n(), Dim::Sym("m".into())),
        }],
        vec![],
        vec![Node {
            name: "outer".into(),
            op: Arc::new(wginfer::ops::matmul::MatMul),
            inputs: vec!["a".into(), "b".into()],
            outputs: vec!["y".into()],
        }],
    )
    .unwrap();
    wginfer::Model::new(g, Default::default()).unwrap()
}

#[test]
fn an_output_over_the_allocation_limit_is_refused_before_it_is_allocated() {
    let model = outer_product_model();
    let session = wginfer::Session::new(&model, wginfer::Device::Cpu).unwrap();
    // 2^22 × 2^22 f32 = 64 TiB: far over any machine's limit.
    let n = 1usize << 22;
    let a = Tensor::from_vec(vec![n, 1], vec![1f32; n]).unwrap();
    let b = Tensor::from_vec(vec![1, n], vec![1f32; n]).unwrap();
    let e = session.run([("a", a), ("b", b)]).unwrap_err().to_string();
    assert!(e.contains("over the limit") && e.contains("outer"), "{e}");
    // The same model with small inputs runs and is right.
    let a = Tensor::from_vec(vec![2, 1], vec![2f32, 3.0]).unwrap();
    let b = Tensor::from_vec(vec![1, 3], vec![1f32, -1.0, 0.5]).unwrap();
    let y = session.run([("a", a), ("b", b)]).unwrap();
    assert_eq!(y["y"].as_f32().unwrap(), &[2.0, -2.0, 1.0, 3.0, -3.0, 1.5]);
}

fn window_op(op_type: &str, attrs: serde_json::Value) -> Result<std::sync::Arc<dyn wginfer::ops::Op>, String> {
    let def = wginfer::ops::lookup(op_type).unwrap();
    let attrs = attrs.as_object().unwrap().clone();
    (def.build)(&attrs).map_err(|e| e.to_string())
}

#[test]
fn window_attributes_past_u32_are_attribute_errors() {
    for (op, attrs) in [
        (
            "MaxPool",
            serde_json::json!({"kernel_shape": [2, 2], "pads": [1u64 << 62, 0, 0, 0]}),
        ),
        (
            "MaxPool",
            serde_json::json!({"kernel_shape": [2, 2], "pads": [1u64 << 40, 1u64 << 40, 0, 0]}),
        ),
        (
            "AveragePool",
            serde_json::json!({"kernel_shape": [2, 2], "pads": [i64::MAX, i64::MAX, i64::MAX, i64::MAX]}),
        ),
        ("Conv", serde_json::json!({"strides": [i64::MAX, 1]})),
        ("Conv", serde_json::json!({"dilations": [1, 1u64 << 33]})),
    ] {
        let e = window_op(op, attrs.clone()).unwrap_err();
        assert!(e.contains("4294967295"), "{op} {attrs}: {e}");
    }
}

#[test]
fn window_outputs_that_overflow_or_exceed_the_limit_are_errors() {
    use wginfer::tensor::{DType, ValueType};
    // Pads of 2^31 on each side: an output of about 2^32 x 2^32 per channel.
    let pool = window_op(
        "MaxPool",
        serde_json::json!({"kernel_shape": [2, 2], "pads": [1u64 << 31, 1u64 << 31, 1u64 << 31, 1u64 << 31]}),
    )
    .unwrap();
    let x = Tensor::from_vec(vec![1, 1, 8, 8], vec![1f32; 64]).unwrap();
    let model = common::one_op_model(pool.clone(), std::slice::from_ref(&x));
    let session = wginfer::Session::new(&model, wginfer::Device::Cpu).unwrap();
    let e = session.run([("x0", x)]).map(|_| ()).unwrap_err().to_string();
    assert!(e.contains("overflow") || e.contains("over the limit"), "{e}");
    let inferred = pool.infer(&[ValueType::known(DType::F32, &[1, 1, 8, 8])]);
    if let Ok(t) = inferred {
        let shape = t[0].concrete_shape().unwrap();
        assert!(wginfer::tensor::checked_bytes(DType::F32, &shape).is_err(), "{shape:?}");
    }
}

#[test]
fn reshape_and_concat_sizes_that_overflow_are_errors() {
    use wginfer::tensor::{DType, ValueType};
    // [1, 10] to [7, 5270498306774157606]: 7·b wraps to 10 in a plain product.
    let reshape = window_op(
        "Reshape",
        serde_json::json!({"shape": [7, 5_270_498_306_774_157_606i64]}),
    )
    .unwrap();
    let e = reshape.infer(&[ValueType::known(DType::F32, &[1, 10])]).unwrap_err();
    assert!(e.to_string().contains("overflows"), "{e}");
    let x = Tensor::from_vec(vec![1, 10], vec![0f32; 10]).unwrap();
    assert!(reshape.cpu(&[&x]).is_err());
    let concat = window_op("Concat", serde_json::json!({"axis": 0})).unwrap();
    let big = ValueType::known(DType::F32, &[usize::MAX / 2 + 1, 1]);
    let e = concat.infer(&[big.clone(), big]).unwrap_err();
    assert!(e.to_string().contains("overflows"), "{e}");
}
