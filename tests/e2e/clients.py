"""Drives a running `wginfer serve` with the real Python clients.

    python tests/e2e/clients.py HOST:PORT MODEL_DIR

tritonclient[http] (binary tensor bodies by default) and kserve's
InferenceRESTClient (protocol v2): health, metadata, config, repository
index, and infer with binary and JSON inputs and outputs. Probabilities
are checked against MODEL_DIR/reference.safetensors (the trainer's own
predict_proba) within 1e-5. Exits non-zero on the first failure.
"""

import asyncio
import json
import os
import struct
import sys

import numpy as np
import tritonclient.http as triton
from tritonclient.utils import InferenceServerException

from kserve import InferenceRESTClient, RESTConfig
from kserve.protocol.infer_type import InferInput, InferRequest, RequestedOutput

MODEL = "digits-mlp"
TOL = 1e-5
checks = 0


def read_safetensors(path):
    """Reads a safetensors file with numpy alone (F32 and I64 tensors)."""
    with open(path, "rb") as f:
        raw = f.read()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + n])
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        dtype = {"F32": np.float32, "I64": np.int64}[info["dtype"]]
        a, b = info["data_offsets"]
        out[name] = np.frombuffer(raw[8 + n + a : 8 + n + b], dtype=dtype).reshape(info["shape"])
    return out


def check(cond, what):
    global checks
    if not cond:
        raise AssertionError(what)
    checks += 1


def close(got, want, what):
    got = np.asarray(got, dtype=np.float32)
    check(got.shape == want.shape, f"{what}: shape {got.shape} != {want.shape}")
    err = float(np.max(np.abs(got - want))) if got.size else 0.0
    check(err <= TOL, f"{what}: max |diff| {err:.3e} > {TOL}")
    print(f"  {what}: max |diff| {err:.1e}")


def triton_checks(url, x, want):
    print("tritonclient.http")
    c = triton.InferenceServerClient(url=url)
    check(c.is_server_live(), "server live")
    check(c.is_server_ready(), "server ready")
    meta = c.get_server_metadata()
    check(meta["name"] == "wginfer" and "binary_tensor_data" in meta["extensions"], f"server metadata {meta}")
    check(c.is_model_ready(MODEL), "model ready")
    check(c.is_model_ready(MODEL, "1"), "model version 1 ready")
    check(not c.is_model_ready("no-such-model"), "unknown model not ready")
    mm = c.get_model_metadata(MODEL)
    check(mm["inputs"][0]["name"] == "input" and mm["inputs"][0]["shape"] == [-1, 64], f"model metadata {mm}")
    check({o["name"] for o in mm["outputs"]} == {"logits", "probabilities"}, f"model outputs {mm}")
    cfg = c.get_model_config(MODEL)
    check(cfg["max_batch_size"] > 0 and cfg["input"][0]["dims"] == [64], f"model config {cfg}")
    index = c.get_model_repository_index()
    check(any(m["name"] == MODEL and m.get("state") == "READY" for m in index), f"repository index {index}")

    # Binary input, binary output (tritonclient's default for inputs).
    inp = triton.InferInput("input", list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    out = [triton.InferRequestedOutput("probabilities", binary_data=True)]
    r = c.infer(MODEL, [inp], outputs=out, request_id="triton-binary")
    check(r.get_response()["id"] == "triton-binary", "request id echoed")
    check(r.get_response()["model_name"] == MODEL, "model_name in response")
    check(r.get_response()["model_version"] == "1", "model_version in response")
    close(r.as_numpy("probabilities"), want, f"binary in/out, batch {len(x)}")

    # JSON input, JSON output.
    inp = triton.InferInput("input", [16, 64], "FP32")
    inp.set_data_from_numpy(x[:16], binary_data=False)
    out = [
        triton.InferRequestedOutput("probabilities", binary_data=False),
        triton.InferRequestedOutput("logits", binary_data=False),
    ]
    r = c.infer(MODEL, [inp], outputs=out, model_version="1")
    check(len(r.get_response()["outputs"]) == 2, "both outputs returned")
    close(r.as_numpy("probabilities"), want[:16], "JSON in/out, batch 16")

    # JSON input, all outputs in binary (request-level binary_data_output).
    inp = triton.InferInput("input", [4, 64], "FP32")
    inp.set_data_from_numpy(x[4:8], binary_data=False)
    r = c.infer(MODEL, [inp])
    close(r.as_numpy("probabilities"), want[4:8], "JSON in, default outputs")

    # Many concurrent single-row requests (merged by the dynamic batcher).
    cc = triton.InferenceServerClient(url=url, concurrency=8)
    pending = []
    for i in range(64):
        inp = triton.InferInput("input", [1, 64], "FP32")
        inp.set_data_from_numpy(x[i : i + 1])
        pending.append((i, cc.async_infer(MODEL, [inp], outputs=[triton.InferRequestedOutput("probabilities")])))
    got = np.concatenate([p.get_result().as_numpy("probabilities") for _, p in pending])
    close(got, want[:64], "64 concurrent single-row requests")
    cc.close()

    # Errors come back as InferenceServerException with the status.
    inp = triton.InferInput("wrong_name", [1, 64], "FP32")
    inp.set_data_from_numpy(x[:1])
    try:
        c.infer(MODEL, [inp])
        check(False, "a wrong input name must fail")
    except InferenceServerException as e:
        check(e.status() == "400" and "wrong_name" in e.message(), f"wrong input name: {e}")
    inp = triton.InferInput("input", [1, 64], "FP32")
    inp.set_data_from_numpy(x[:1])
    try:
        c.infer("no-such-model", [inp])
        check(False, "an unknown model must fail")
    except InferenceServerException as e:
        check(e.status() == "404", f"unknown model: {e}")
    c.close()


def onnx_checks(url, repo, x):
    """The repository's ONNX model (models/digits-cnn/model.onnx), when it is
    there: served like any other, checked against onnxruntime's outputs."""
    c = triton.InferenceServerClient(url=url)
    index = {m["name"]: m for m in c.get_model_repository_index()}
    if "digits-cnn" not in index:
        print("onnx: no digits-cnn in the repository; nothing to check")
        return
    print("tritonclient.http, ONNX model digits-cnn")
    check(index["digits-cnn"].get("state") == "READY", f"digits-cnn ready: {index['digits-cnn']}")
    want = read_safetensors(f"{repo}/digits-cnn/reference.safetensors")["probabilities"]
    images = np.ascontiguousarray(x[:32].reshape(32, 1, 8, 8))
    inp = triton.InferInput("input", list(images.shape), "FP32")
    inp.set_data_from_numpy(images)
    r = c.infer("digits-cnn", [inp], outputs=[triton.InferRequestedOutput("probabilities")])
    got = r.as_numpy("probabilities")
    err = float(np.max(np.abs(got - want[:32])))
    check(err <= 1e-4, f"digits-cnn: max |diff| {err:.3e} > 1e-4 against onnxruntime")
    print(f"  digits-cnn vs onnxruntime, batch 32: max |diff| {err:.1e}")
    c.close()


async def kserve_checks(url, x, want):
    print("kserve InferenceRESTClient (protocol v2)")
    base = f"http://{url}"
    c = InferenceRESTClient(RESTConfig(protocol="v2", retries=1, timeout=30))
    try:
        check(await c.is_server_live(base), "kserve: server live")
        check(await c.is_server_ready(base), "kserve: server ready")
        check(await c.is_model_ready(base, MODEL), "kserve: model ready")

        # Binary input, binary output.
        inp = InferInput("input", list(x[:32].shape), "FP32")
        inp.set_data_from_numpy(x[:32], binary_data=True)
        req = InferRequest(
            model_name=MODEL,
            infer_inputs=[inp],
            request_id="kserve-binary",
            request_outputs=[RequestedOutput("probabilities", parameters={"binary_data": True})],
        )
        r = await c.infer(base, req, model_name=MODEL)
        check(r.id == "kserve-binary", f"kserve: id echoed ({r.id})")
        check(r.model_name == MODEL, "kserve: model name")
        got = {o.name: o.as_numpy() for o in r.outputs}
        close(got["probabilities"], want[:32], "kserve: binary in/out, batch 32")

        # JSON input, JSON output.
        inp = InferInput("input", [8, 64], "FP32")
        inp.set_data_from_numpy(x[100:108], binary_data=False)
        req = InferRequest(model_name=MODEL, infer_inputs=[inp], request_id="kserve-json")
        r = await c.infer(base, req, model_name=MODEL)
        got = {o.name: o.as_numpy() for o in r.outputs}
        check(set(got) == {"logits", "probabilities"}, f"kserve: outputs {set(got)}")
        close(got["probabilities"], want[100:108], "kserve: JSON in/out, batch 8")

        # A plain dict (the raw v2 JSON protocol).
        body = {"inputs": [{"name": "input", "shape": [2, 64], "datatype": "FP32", "data": x[200:202].tolist()}]}
        r = await c.infer(base, body, model_name=MODEL)
        got = {o.name: o.as_numpy() for o in r.outputs}
        close(got["probabilities"], want[200:202], "kserve: dict body")
    finally:
        await c.close()


def main():
    url, model_dir = sys.argv[1], sys.argv[2]
    test = read_safetensors(f"{model_dir}/digits_test.safetensors")
    ref = read_safetensors(f"{model_dir}/reference.safetensors")
    x = np.ascontiguousarray(test["input"], dtype=np.float32)
    want = ref["probabilities"]
    triton_checks(url, x, want)
    onnx_checks(url, os.path.dirname(os.path.abspath(model_dir)), x)
    asyncio.run(kserve_checks(url, x, want))
    print(f"E2E OK: {checks} checks passed")


if __name__ == "__main__":
    main()
