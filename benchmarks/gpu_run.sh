#!/usr/bin/env bash
# One GPU session, well inside 8 minutes: install adpf, measure the card's bf16 matmul rate and the
# paper preset beside its baselines (bf16 + channels-last, eager), profile adpf's training steps,
# train a few hundred real steps of both stages, time adpf's steps under torch.compile, then one table.
#
#   bash benchmarks/gpu_run.sh           # on a GPU; the table goes to stdout and $OUT/gpu_table.md
#   bash benchmarks/gpu_run.sh --tiny    # the same parts on the CPU at a few pixels (checks the script)
#
# Each part has its own time limit, so a slow compile cannot take the rest with it.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-benchmarks/results/gpu-run}"
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" ADPF_CACHE_DIR="${ADPF_CACHE_DIR:-/tmp/adpf-cache}"
PY="${PYTHON:-python3}"
start=$SECONDS
"$PY" -m pip install -q --no-deps --no-build-isolation -e . || echo "pip install -e . failed; running from the checkout"
echo "pip install -e .: $((SECONDS - start)) s"
"$PY" -c "import torch; print('torch', torch.__version__, '| cuda', torch.cuda.is_available(), '|',
  torch.cuda.get_device_name() if torch.cuda.is_available() else 'cpu')"
part() {  # part NAME LIMIT_SECONDS
  local t0=$SECONDS
  echo "=== $1 (limit $2 s)"
  timeout "$2" "$PY" benchmarks/gpu_bench.py --part "$1" --out "$OUT" "${@:3}" || echo "=== $1 stopped (status $?)"
  echo "=== $1: $((SECONDS - t0)) s"
}
part measure 130 "$@"
part profile 35 "$@"
part train 110 "$@"
part syncs 25 "$@"
part compile 120 "$@"
part summary 20 "$@"
echo "total: $((SECONDS - start)) s"
