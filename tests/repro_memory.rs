//! Hostile files through the `wginfer` binary, each run under a 1 GiB
//! address-space limit (`prlimit --as`). An allocation past the limit makes
//! the process abort, so a file that asks for more memory than that, or that
//! panics, fails here; each must end in exit status 1 with a message naming
//! the problem, or in the right answer.
//!
//! Without `prlimit` (not Linux) the tests print SKIPPED.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use prost::Message;
use wginfer::model::onnx::proto;

/// The address-space limit every run gets.
const LIMIT: u64 = 1 << 30;

struct Outcome {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

fn prlimit() -> Option<PathBuf> {
    ["/usr/bin/prlimit", "/bin/prlimit"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
}

/// Runs `wginfer ARGS` under the limit, or `None` where `prlimit` is missing.
fn wginfer_limited(args: &[&str]) -> Option<Outcome> {
    let Some(prlimit) = prlimit() else {
        common::skip("prlimit (util-linux) is not installed");
        return None;
    };
    let o = Command::new(prlimit)
        .arg(format!("--as={LIMIT}"))
        .arg("--")
        .arg(env!("CARGO_BIN_EXE_wginfer"))
        .args(args)
        .env("WGINFER_DEVICE", "cpu")
        .output()
        .unwrap();
    Some(Outcome {
        code: o.status.code(),
        stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
    })
}

/// Asserts a clean failure whose message contains every one of `parts`.
fn assert_refused(what: &str, args: &[&str], parts: &[&str]) {
    let Some(o) = wginfer_limited(args) else { return };
    assert_eq!(
        o.code,
        Some(1),
        "{what}: expected exit status 1, got {:?} (a signal: panic or abort)\nstdout: {}\nstderr: {}",
        o.code,
        o.stdout,
        o.stderr
    );
    assert!(!o.stderr.contains("panicked"), "{what}: {}", o.stderr);
    for p in parts {
        assert!(o.stderr.contains(p), "{what}: the message lacks `{p}`:\n{}", o.stderr);
    }
}

/// A `.npy` file: version 1.0 header for `shape`, then `data` as it is.
fn npy(shape: &str, data: &[f32]) -> Vec<u8> {
    let mut header = format!("{{'descr': '<f4', 'fortran_order': False, 'shape': {shape}, }}");
    while (10 + header.len() + 1) % 64 != 0 {
        header.push(' ');
    }
    header.push('\n');
    let mut out = b"\x93NUMPY\x01\x00".to_vec();
    out.extend_from_slice(&(header.len() as u16).to_le_bytes());
    out.extend_from_slice(header.as_bytes());
    out.extend(data.iter().flat_map(|v| v.to_le_bytes()));
    out
}

fn value_info(name: &str, elem_type: i32, dims: &[i64]) -> proto::ValueInfoProto {
    let dim = dims
        .iter()
        .map(|&d| proto::Dimension {
            dim_value: Some(d),
            ..Default::default()
        })
        .collect();
    proto::ValueInfoProto {
        name: name.into(),
        r#type: Some(proto::TypeProto {
            tensor_type: Some(proto::TypeProtoTensor {
                elem_type,
                shape: Some(proto::TensorShapeProto { dim }),
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn ints(name: &str, v: &[i64]) -> proto::AttributeProto {
    proto::AttributeProto {
        name: name.into(),
        r#type: proto::attr_type::INTS,
        ints: v.to_vec(),
        ..Default::default()
    }
}

fn node(op: &str, ins: &[&str], out: &str, attribute: Vec<proto::AttributeProto>) -> proto::NodeProto {
    proto::NodeProto {
        input: ins.iter().map(|s| s.to_string()).collect(),
        output: vec![out.into()],
        name: format!("{}_node", op.to_lowercase()),
        op_type: op.into(),
        attribute,
        ..Default::default()
    }
}

/// A float initializer with `dims` and no data at all.
fn empty_f32(name: &str, dims: &[i64]) -> proto::TensorProto {
    proto::TensorProto {
        name: name.into(),
        dims: dims.to_vec(),
        data_type: proto::data_type::FLOAT,
        ..Default::default()
    }
}

fn f32_init(name: &str, dims: &[i64], data: Vec<f32>) -> proto::TensorProto {
    proto::TensorProto {
        name: name.into(),
        dims: dims.to_vec(),
        data_type: proto::data_type::FLOAT,
        float_data: data,
        ..Default::default()
    }
}

fn i64_init(name: &str, data: &[i64]) -> proto::TensorProto {
    proto::TensorProto {
        name: name.into(),
        dims: vec![data.len() as i64],
        data_type: proto::data_type::INT64,
        int64_data: data.to_vec(),
        ..Default::default()
    }
}

/// Writes a one-input ONNX model (`x`, f32 of `x_dims`) to `dir/name`.
fn write_onnx(
    dir: &Path,
    name: &str,
    x_dims: &[i64],
    nodes: Vec<proto::NodeProto>,
    initializer: Vec<proto::TensorProto>,
) -> String {
    let y = nodes.last().map(|n| n.output[0].clone()).unwrap_or_default();
    let model = proto::ModelProto {
        ir_version: 8,
        opset_import: vec![proto::OperatorSetIdProto {
            domain: String::new(),
            version: 17,
        }],
        graph: Some(proto::GraphProto {
            name: name.into(),
            node: nodes,
            initializer,
            input: vec![value_info("x", proto::data_type::FLOAT, x_dims)],
            output: vec![proto::ValueInfoProto {
                name: y,
                ..Default::default()
            }],
            ..Default::default()
        }),
        ..Default::default()
    };
    let path = dir.join(name);
    std::fs::write(&path, model.encode_to_vec()).unwrap();
    path.to_string_lossy().into_owned()
}

/// An 8×8 image input for the window-op models.
fn image(dir: &Path) -> String {
    let p = dir.join("x.npy");
    let data: Vec<f32> = (0..64).map(|i| (i as f32 * 0.37).sin()).collect();
    std::fs::write(&p, npy("(1, 1, 8, 8)", &data)).unwrap();
    p.to_string_lossy().into_owned()
}

#[test]
fn a_control_model_runs_under_the_limit() {
    let dir = tempfile::tempdir().unwrap();
    let x = image(dir.path());
    let m = write_onnx(
        dir.path(),
        "pool.onnx",
        &[1, 1, 8, 8],
        vec![node("MaxPool", &["x"], "y", vec![ints("kernel_shape", &[8, 8])])],
        vec![],
    );
    let Some(o) = wginfer_limited(&["run", &m, "--input", &x]) else {
        return;
    };
    assert_eq!(o.code, Some(0), "{}", o.stderr);
    // One 8×8 window: the largest input value.
    let want = (0..64).map(|i| (i as f32 * 0.37).sin()).fold(f32::MIN, f32::max);
    assert!(o.stdout.contains(&format!("{want:.6}")), "{want}: {}", o.stdout);
}

#[test]
fn npy_shapes_whose_size_wraps_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let x = dir.path().join("huge.npy");
    std::fs::write(&x, npy("(9223372036854775808, 64)", &[])).unwrap();
    let mlp = common::root("models/digits-cnn/digits_mlp.onnx");
    let args = ["run", mlp.to_str().unwrap(), "--input", x.to_str().unwrap()];
    assert_refused("npy of 2^63 x 64", &args, &["huge.npy", "overflow"]);
    assert_refused(
        "--input /dev/zero",
        &["run", mlp.to_str().unwrap(), "--input", "/dev/zero"],
        &["/dev/zero", "not a regular file"],
    );
}

#[test]
fn initializers_whose_size_wraps_or_has_no_data_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let x = dir.path().join("x.npy");
    std::fs::write(&x, npy("(1,)", &[1.0])).unwrap();
    let x = x.to_string_lossy().into_owned();
    let gather = write_onnx(
        dir.path(),
        "gather.onnx",
        &[1],
        vec![node("Gather", &["table", "idx"], "y", vec![])],
        vec![empty_f32("table", &[1 << 32, 1 << 32]), i64_init("idx", &[0])],
    );
    assert_refused("Gather of [2^32, 2^32]", &["run", &gather, "--input", &x], &["table"]);
    let transpose = write_onnx(
        dir.path(),
        "transpose.onnx",
        &[1],
        vec![node("Transpose", &["c"], "y", vec![ints("perm", &[1, 0])])],
        vec![empty_f32("c", &[64, 1 << 62])],
    );
    assert_refused("Transpose of [64, 2^62]", &["run", &transpose, "--input", &x], &["`c`"]);
}

#[test]
fn reshapes_whose_size_wraps_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let x = dir.path().join("x.npy");
    std::fs::write(&x, npy("(1, 10)", &[0.5; 10])).unwrap();
    let m = write_onnx(
        dir.path(),
        "reshape.onnx",
        &[1, 10],
        vec![node("Reshape", &["x", "shape"], "y", vec![])],
        vec![i64_init("shape", &[7, 5_270_498_306_774_157_606])],
    );
    assert_refused(
        "Reshape [1, 10] to [7, 5270498306774157606]",
        &["run", &m, "--input", x.to_str().unwrap()],
        &["reshape_node", "overflows"],
    );
}

#[test]
fn window_geometry_past_the_limits_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let x = image(dir.path());
    let w = f32_init("w", &[1, 1, 3, 3], vec![0.1; 9]);
    let cases: Vec<(&str, proto::NodeProto, Vec<proto::TensorProto>)> = vec![
        (
            "Conv pads 2^62",
            node("Conv", &["x", "w"], "y", vec![ints("pads", &[1 << 62, 0, 0, 0])]),
            vec![w.clone()],
        ),
        (
            "MaxPool pads 2^40",
            node(
                "MaxPool",
                &["x"],
                "y",
                vec![ints("kernel_shape", &[2, 2]), ints("pads", &[1 << 40, 1 << 40, 0, 0])],
            ),
            vec![],
        ),
        (
            "AveragePool pads i64::MAX",
            node(
                "AveragePool",
                &["x"],
                "y",
                vec![ints("kernel_shape", &[2, 2]), ints("pads", &[i64::MAX; 4])],
            ),
            vec![],
        ),
        (
            "MaxPool strides i64::MAX",
            node(
                "MaxPool",
                &["x"],
                "y",
                vec![ints("kernel_shape", &[2, 2]), ints("strides", &[i64::MAX, i64::MAX])],
            ),
            vec![],
        ),
        (
            "MaxPool pads 2^31 (an output of 2^64 values)",
            node(
                "MaxPool",
                &["x"],
                "y",
                vec![ints("kernel_shape", &[2, 2]), ints("pads", &[1 << 31; 4])],
            ),
            vec![],
        ),
    ];
    for (i, (what, n, init)) in cases.into_iter().enumerate() {
        let op = n.op_type.clone();
        let m = write_onnx(dir.path(), &format!("w{i}.onnx"), &[1, 1, 8, 8], vec![n], init);
        assert_refused(what, &["run", &m, "--input", &x], &[&op]);
    }
}

#[test]
fn external_data_outside_the_model_directory_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let inner = dir.path().join("model");
    std::fs::create_dir(&inner).unwrap();
    std::fs::write(dir.path().join("outside.bin"), [0u8; 64]).unwrap();
    let x = image(&inner);
    for (i, location) in ["/dev/zero", "../outside.bin", "/etc/hostname"].iter().enumerate() {
        let mut w = empty_f32("w", &[1, 1, 3, 3]);
        w.external_data = vec![proto::StringStringEntryProto {
            key: "location".into(),
            value: location.to_string(),
        }];
        w.data_location = proto::DATA_LOCATION_EXTERNAL;
        let m = write_onnx(
            &inner,
            &format!("ext{i}.onnx"),
            &[1, 1, 8, 8],
            vec![node("Conv", &["x", "w"], "y", vec![])],
            vec![w],
        );
        assert_refused(location, &["run", &m, "--input", &x], &[location]);
    }
}

#[test]
fn a_nan_pixel_gives_nan_probabilities() {
    let dir = tempfile::tempdir().unwrap();
    let mut data = vec![0.5f32; 64];
    data[27] = f32::NAN;
    let x = dir.path().join("nan.npy");
    std::fs::write(&x, npy("(1, 1, 8, 8)", &data)).unwrap();
    let cnn = common::root("models/digits-cnn/model.onnx");
    let Some(o) = wginfer_limited(&["run", cnn.to_str().unwrap(), "--input", x.to_str().unwrap()]) else {
        return;
    };
    assert_eq!(o.code, Some(0), "{}", o.stderr);
    let values = o.stdout.lines().nth(1).unwrap_or_default();
    assert_eq!(values.matches("NaN").count(), 10, "{}", o.stdout);
}

#[test]
fn gguf_files_with_impossible_counts_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    // Version 3, 2^40 tensors, 2^40 metadata entries, then nothing.
    let mut bytes = b"GGUF".to_vec();
    bytes.extend_from_slice(&3u32.to_le_bytes());
    bytes.extend_from_slice(&(1u64 << 40).to_le_bytes());
    bytes.extend_from_slice(&(1u64 << 40).to_le_bytes());
    let p = dir.path().join("counts.gguf");
    std::fs::write(&p, &bytes).unwrap();
    assert_refused(
        "GGUF with 2^40 tensors",
        &["inspect", p.to_str().unwrap()],
        &["counts.gguf"],
    );
}
