#!/usr/bin/env bash
# The CUDA check on a GPU machine (see benchmarks/gpu_check.py): installs onnxruntime-gpu from
# the parts ../shared/tools/fetch_ort_gpu.sh leaves in .gpu/ (once, into .gpu/site), puts it
# first on the path, and runs the check. Arguments go to gpu_check.py (--ep cpu for a dry run).
set -euo pipefail
cd "$(dirname "$0")/.."
python="${PYTHON:-python3}"
if [ ! -d .gpu/site/onnxruntime ] && compgen -G ".gpu/ort.part-*" > /dev/null; then
  wheel=".gpu/$(cat .gpu/WHEEL_NAME)"
  cat .gpu/ort.part-* > "$wheel"
  "$python" -m pip install -q --no-index --no-deps --target .gpu/site "$wheel"
  rm -f "$wheel"
fi
export PYTHONPATH="$PWD/.gpu/site:$PWD${PYTHONPATH:+:$PYTHONPATH}"
exec "$python" benchmarks/gpu_check.py "$@"
