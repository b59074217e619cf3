#!/usr/bin/env bash
# The CUDA check (benchmarks/gpu_check.py) on a GPU machine that has Python and PyTorch but no
# network and no graphopt dependencies:
#   bash benchmarks/gpu_check.sh --prepare   here, with the package registry: onnxruntime-gpu as parts
#                                            (../shared/tools/fetch_ort_gpu.sh) and graphopt's
#                                            dependencies for Python 3.12 as wheels, all in .gpu/
#   bash benchmarks/gpu_check.sh [ARGS]      there: installs what .gpu/ holds into .gpu/site (once),
#                                            puts it first on PYTHONPATH, runs gpu_check.py ARGS
set -euo pipefail
cd "$(dirname "$0")/.."
python="${PYTHON:-python3}"
# graphopt's and onnxruntime-gpu's dependencies, and pytest for the CUDA tests, less what a PyTorch install
# brings (sympy, typing_extensions, filelock...). numpy and packaging are listed: torch does not require them.
deps=(onnx onnx-ir onnxscript rich markdown-it-py mdurl pygments archspec ml_dtypes protobuf numpy packaging
  flatbuffers pytest pluggy iniconfig)
if [ "${1:-}" = "--prepare" ]; then
  bash ../shared/tools/fetch_ort_gpu.sh
  "$python" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
    -d .gpu/wheels "${deps[@]}"
  du -sh .gpu
  exit 0
fi
if [ ! -d .gpu/site/onnxruntime ] && compgen -G ".gpu/ort.part-*" > /dev/null; then
  wheel=".gpu/$(cat .gpu/WHEEL_NAME)"
  cat .gpu/ort.part-* > "$wheel"
  "$python" -m pip install -q --no-index --no-deps --target .gpu/site "$wheel"
  rm -f "$wheel"
fi
if compgen -G ".gpu/wheels/*.whl" > /dev/null && [ ! -e .gpu/site/.wheels-installed ]; then
  "$python" -m pip install -q --no-index --no-deps --target .gpu/site .gpu/wheels/*.whl
  touch .gpu/site/.wheels-installed
fi
export PYTHONPATH="$PWD/.gpu/site:$PWD${PYTHONPATH:+:$PYTHONPATH}"
exec "$python" benchmarks/gpu_check.py "$@"
