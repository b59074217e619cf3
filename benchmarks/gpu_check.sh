#!/usr/bin/env bash
# The CUDA check (benchmarks/gpu_check.py) on a GPU machine that has Python 3.12, PyTorch and most of
# graphopt's dependencies but no network (this workplace's CUDA image):
#   bash benchmarks/gpu_check.sh --prepare   here, with the package registry: onnxruntime-gpu repacked as
#                                            xz parts in .gpu/ (see below), and as wheels the two
#                                            dependencies the image lacks or has too old
#   bash benchmarks/gpu_check.sh [ARGS]      there: unpacks what .gpu/ holds into .gpu/site (once),
#                                            puts it first on PYTHONPATH, runs gpu_check.py ARGS
# A call to the GPU machine carries at most 64 MiB with the working tree (33 MB of tracked files), so
# the 255 MB wheel would need 8 calls or more. --prepare unpacks it, drops the two libraries the Python
# CUDA path never loads (libonnxruntime.so, the C API's copy of what the Python module links statically,
# and the TensorRT provider), and packs the rest with xz into parts that each fit beside the tree (the part
# size comes from the tree's size when --prepare runs: prepare again after the tree grows).
set -euo pipefail
cd "$(dirname "$0")/.."
python="${PYTHON:-python3}"
ort_version="${ORT_GPU_VERSION:-1.31.1}"
# onnx-ir: the image has 1.0, graphopt needs 1.1; archspec: not in the image.
deps=(onnx-ir==1.1.0 archspec)
if [ "${1:-}" = "--prepare" ]; then
  pip_for_312=(--no-deps --only-binary=:all: --python-version 3.12 --implementation cp
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64)
  if compgen -G ".gpu/ort.tar.xz.part-*" > /dev/null && [ "$(cat .gpu/ORT_VERSION 2>/dev/null)" = "$ort_version" ]; then
    # Parts of this version are here: only split them again for today's tree (xz takes minutes).
    cat .gpu/ort.tar.xz.part-* > .gpu/ort.tar.xz
  else
    rm -rf .gpu/unpacked .gpu/*.whl
    mkdir -p .gpu/unpacked
    "$python" -m pip download -q "${pip_for_312[@]}" -d .gpu "onnxruntime-gpu==${ort_version}"
    (cd .gpu/unpacked && unzip -q ../onnxruntime_gpu-*.whl &&
      rm -f onnxruntime/capi/libonnxruntime.so.* onnxruntime/capi/libonnxruntime_providers_tensorrt.so)
    tar -C .gpu/unpacked -cf - . | xz -9e -T0 > .gpu/ort.tar.xz
    rm -rf .gpu/unpacked .gpu/onnxruntime_gpu-*.whl
    echo "$ort_version" > .gpu/ORT_VERSION
  fi
  rm -rf .gpu/wheels .gpu/ort.tar.xz.part-*
  mkdir -p .gpu/wheels
  "$python" -m pip download -q "${pip_for_312[@]}" -d .gpu/wheels "${deps[@]}"
  # Each part fits beside what travels with every call (tracked files and untracked ones git does not ignore)
  # and the wheels, with 1 MiB to spare.
  tree=$(git ls-files -z --cached --others --exclude-standard | "$python" -c \
    "import os, sys; print(sum(os.path.getsize(f) for f in sys.stdin.read().split('\0') if os.path.isfile(f)))")
  wheels=$(du -sb .gpu/wheels | cut -f1)
  part=$((64 * 1048576 - tree - wheels - 1048576))
  if [ "$part" -lt 1048576 ]; then
    echo "gpu_check.sh: the working tree ($tree bytes) leaves no room for parts in a 64 MiB call" >&2
    exit 1
  fi
  split -b "$part" -d -a 2 .gpu/ort.tar.xz .gpu/ort.tar.xz.part-
  rm -f .gpu/ort.tar.xz
  ls -la .gpu .gpu/wheels
  echo "Carry each .gpu/ort.tar.xz.part-N in its own call, and .gpu/wheels with one of them."
  exit 0
fi
if [ ! -e .gpu/site/.ort-installed ] && compgen -G ".gpu/ort.tar.xz.part-*" > /dev/null; then
  # Unpacked aside and moved in only when whole: a run before the last part arrived fails and leaves nothing.
  rm -rf .gpu/ort.tmp
  mkdir -p .gpu/ort.tmp .gpu/site
  cat .gpu/ort.tar.xz.part-* | "$python" -c \
    "import sys, tarfile; tarfile.open(fileobj=sys.stdin.buffer, mode='r|xz').extractall('.gpu/ort.tmp')"
  rm -rf .gpu/site/onnxruntime .gpu/site/onnxruntime_gpu-*.dist-info
  mv .gpu/ort.tmp/* .gpu/site/
  rm -rf .gpu/ort.tmp
  touch .gpu/site/.ort-installed
fi
if compgen -G ".gpu/wheels/*.whl" > /dev/null && [ ! -e .gpu/site/.wheels-installed ]; then
  "$python" -m pip install -q --no-index --no-deps --target .gpu/site .gpu/wheels/*.whl
  touch .gpu/site/.wheels-installed
fi
export PYTHONPATH="$PWD/.gpu/site:$PWD${PYTHONPATH:+:$PYTHONPATH}"
exec "$python" benchmarks/gpu_check.py "$@"
