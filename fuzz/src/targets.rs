//! What each fuzz target does with its input, shared by the cargo-fuzz
//! binaries (fuzz/fuzz_targets) and by the regression replay that an ordinary
//! `cargo test` runs (tests/fuzz_regressions.rs). Every function must return
//! for any input: an error is a pass, a panic or an abort is a finding.

use std::path::Path;

/// The names of the targets, as the folders under fuzz/regressions name them.
pub const TARGETS: &[&str] = &[
    "model_file",
    "onnx",
    "npy",
    "kserve_json",
    "kserve_binary",
    "gguf",
    "decoder_gguf",
    "decoder_hf",
];

/// Runs target `name` on `data`; false for an unknown name.
pub fn run(name: &str, data: &[u8]) -> bool {
    match name {
        "model_file" => model_file(data),
        "onnx" => onnx(data),
        "npy" => npy(data),
        "kserve_json" => kserve_json(data),
        "kserve_binary" => kserve_binary(data),
        "gguf" => gguf(data),
        "decoder_gguf" => decoder_gguf(data),
        "decoder_hf" => decoder_hf(data),
        _ => return false,
    }
    true
}

/// A model file (safetensors with the graph JSON); a model that loads is
/// also compiled for the CPU and run once on zeros of its input shapes where
/// those are concrete and small.
pub fn model_file(data: &[u8]) {
    if let Ok(model) = wginfer::Model::from_bytes(data) {
        run_on_zeros(&model);
    }
}

/// An ONNX file (protobuf); external data resolves in a directory that does
/// not exist, so only inline data loads.
pub fn onnx(data: &[u8]) {
    let dir = Path::new("/nonexistent-wginfer-fuzz");
    if let Ok(model) = wginfer::model::onnx::import_bytes(data, dir, &Default::default()) {
        run_on_zeros(&model);
    }
}

/// A `.npy` file.
pub fn npy(data: &[u8]) {
    let _ = wginfer::tensor::read_npy(data);
}

/// A KServe v2 inference request with a JSON body.
pub fn kserve_json(data: &[u8]) {
    let _ = wginfer::serve::protocol::parse_infer(data, None);
}

/// A KServe v2 inference request with a binary body: the first two bytes
/// give the JSON header's length (`Inference-Header-Content-Length`).
pub fn kserve_binary(data: &[u8]) {
    if data.len() < 2 {
        return;
    }
    let len = u16::from_le_bytes([data[0], data[1]]) as usize;
    let _ = wginfer::serve::protocol::parse_infer(&data[2..], Some(len));
}

/// A GGUF file; a file that parses has every tensor's bytes looked up.
pub fn gguf(data: &[u8]) {
    if let Ok(file) = wginfer::model::gguf::GgufFile::read(data) {
        for t in file.tensors() {
            let _ = file.tensor_bytes(&t.name);
        }
    }
}

/// A GGUF decoder: a file that parses is built into decoder weights
/// (hyperparameters, tensor shapes and formats checked).
pub fn decoder_gguf(data: &[u8]) {
    if let Ok(file) = wginfer::model::gguf::GgufFile::read(data) {
        let _ = wginfer::generate::load::from_gguf(&file);
    }
}

/// A Hugging Face decoder: the first two bytes give the length of the
/// `config.json` text that follows; the rest is `model.safetensors`.
pub fn decoder_hf(data: &[u8]) {
    if data.len() < 2 {
        return;
    }
    let len = (u16::from_le_bytes([data[0], data[1]]) as usize).min(data.len() - 2);
    let (config, weights) = data[2..].split_at(len);
    if let Ok(config) = std::str::from_utf8(config) {
        let _ = wginfer::generate::hf::from_memory(config, weights.to_vec());
    }
}

/// Runs `model` once on the CPU on zeros, when every input shape is known and
/// small (the run's own checks are what is fuzzed, not the machine's memory).
fn run_on_zeros(model: &wginfer::Model) {
    let Ok(session) = wginfer::Session::new(model, wginfer::Device::Cpu) else {
        return;
    };
    let mut inputs = Vec::new();
    for input in model.graph().inputs() {
        let Some(shape) = input.ty.concrete_shape() else { return };
        if wginfer::tensor::checked_numel(&shape).map_or(true, |n| n > 1 << 16) {
            return;
        }
        inputs.push((input.name.clone(), wginfer::Tensor::zeros(input.ty.dtype, shape)));
    }
    let _ = session.run(inputs);
}
