#!/usr/bin/env bash
# One GPU session. The default (at most 4 minutes: the parts' limits add up to 225 s) is the loop
# against its steps (issue 18): adpf's bare training steps at batch 256 (steps), adpf.train's loop
# with the gpu recipe and the data on the device beside the DataLoader with 8 workers, with the
# loop's share of the bare steps, the share of validation and checkpoints, and what limits it
# (loop); host syncs per step (syncs); the bare steps under torch.compile (compile); chapter 9
# (chapters, only where papermill is installed); then one table. --full adds the first session's
# parts (at most 8 more minutes): the bf16 matmul rate, the paper preset beside plain attention and
# plain_cnn at batch 32 and 256, a profile, and a longer real training. Each part
# (benchmarks/gpu_bench.py) has its own time limit and writes its JSON into OUT, so a part that
# runs over loses only itself.
#
#   bash benchmarks/gpu_run.sh [OUT]           # on a GPU: OUT/gpu_table.md, the JSON files, gpu_log.txt
#   bash benchmarks/gpu_run.sh --full [OUT]    # and the first session's parts
#   bash benchmarks/gpu_run.sh --tiny [OUT]    # the same parts on this CPU, a few pixels and faces (a rehearsal)
#   bash benchmarks/gpu_run.sh --fetch-wheels  # where PyPI is reachable: what the chapters need (papermill,
#                                              # jupytext, ipykernel, myst-nb) for the GPU's Python, into
#                                              # .whl/gpu_run/; the run installs those its Python lacks
#
# Nothing is downloaded during the run. PYTHON picks the interpreter (default python3); OUT (the
# argument, or the variable) the folder (default benchmarks/results/gpu-run;
# /tmp/adpf-gpu-run-tiny with --tiny); ADPF_CACHE_DIR
# the cache of drawn faces and trainings, shared by the training part and the chapters (default
# /tmp/adpf-cache). The chapters part runs book/build.py in this checkout (it writes _build/).
set -uo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
WHEELS=.whl/gpu_run

fetch_wheels() {  # the chapters' runtime for the GPU machine's Python (GPU_PYTHON, default 3.12)
  local platforms=() n
  for n in 17 24 26 27 28 31 34 35 39; do platforms+=(--platform "manylinux_2_${n}_x86_64"); done
  local target=(--only-binary=:all: --python-version "${GPU_PYTHON:-3.12}" --implementation cp
                "${platforms[@]}" --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d "$WHEELS")
  # the versions the rehearsal ran with, where this environment has them
  mapfile -t specs < <("$PY" -c '
from importlib.metadata import PackageNotFoundError, version
for name in ("papermill", "jupytext", "ipykernel", "myst-nb", "docutils"):
    try:
        print(f"{name}=={version(name)}")
    except PackageNotFoundError:
        print(name)')
  rm -rf "$WHEELS" && mkdir -p "$WHEELS" || return 1
  # myst-nb only for its glue() (IPython, nbformat and docutils at run time, not Sphinx)
  "$PY" -m pip download -q "${target[@]}" "${specs[@]:0:3}" &&
    "$PY" -m pip download -q --no-deps "${target[@]}" "${specs[@]:3}" || return 1
  ls "$WHEELS" | wc -l | xargs echo "wheels:"; du -sh "$WHEELS"
}

install_wheels() {  # the wheels in $WHEELS whose distribution this Python lacks, into a folder of their own
  [ -d "$WHEELS" ] || { echo "no $WHEELS: the chapters need papermill, jupytext, ipykernel and myst-nb installed"; return 0; }
  mapfile -t missing < <("$PY" -c '
import sys
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
for wheel in sorted(Path(sys.argv[1]).glob("*.whl")):
    try:
        version(wheel.name.split("-")[0])
    except PackageNotFoundError:
        print(wheel)' "$WHEELS")
  echo "wheels to install (their distribution missing here): ${#missing[@]}"
  [ ${#missing[@]} -eq 0 ] && return 0
  local pip=("$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/adpf-site)
  if ! "${pip[@]}" "${missing[@]}"; then  # one wheel this machine cannot take (its glibc, say): the others still
    local wheel; for wheel in "${missing[@]}"; do "${pip[@]}" "$wheel" || echo "not installed: $wheel"; done
  fi
  export PYTHONPATH="/tmp/adpf-site:$PYTHONPATH"
}

part() {  # part NAME LIMIT_SECONDS
  local t0=$SECONDS status
  echo "=== $1 (limit $2 s)"
  timeout -k 5 "$2" "$PY" benchmarks/gpu_bench.py --part "$1" --out "$OUT" $TINY
  status=$?
  [ $status -ne 0 ] && echo "=== $1 stopped (status $status$([ $status -eq 124 ] && echo ': ran past its limit'))"
  echo "=== $1: $((SECONDS - t0)) s"
}

run() {
  local start=$SECONDS
  install_wheels
  "$PY" -c "import torch; print('torch', torch.__version__, '| cuda', torch.cuda.is_available(), '|',
    torch.cuda.get_device_name() if torch.cuda.is_available() else 'cpu')"
  if [ -z "$TINY" ]; then  # limits on one H200: 275 s together, 470 s more with --full
    part steps 60; part loop 95; part syncs 30; part compile 90
    if [ -n "$FULL" ]; then part matmul 15; part measure 75; part profile 35; part train 170; fi
    if [ -n "$FULL" ]; then part chapters 130
    elif "$PY" -c "import papermill" 2>/dev/null; then part chapters 60
    else echo "=== chapters: skipped (no papermill here; bash benchmarks/gpu_run.sh --fetch-wheels brings it)"; fi
  else  # the rehearsal on a small, shared CPU
    part steps 120; part loop 300; part syncs 300; part compile 300
    if [ -n "$FULL" ]; then part matmul 60; part measure 300; part profile 300; part train 300; part chapters 900; fi
  fi
  part summary 15
  echo "total: $((SECONDS - start)) s"
}

TINY="" FULL=""
while [ $# -gt 0 ]; do
  case "$1" in
    --fetch-wheels) fetch_wheels; exit;;
    --tiny) TINY=--tiny;;
    --full) FULL=1;;
    -*) echo "usage: bash benchmarks/gpu_run.sh [--tiny] [--full] [OUT] | --fetch-wheels" >&2; exit 2;;
    *) OUT="$1";;
  esac
  shift
done
[ -n "$TINY" ] && OUT="${OUT:-${TMPDIR:-/tmp}/adpf-gpu-run-tiny}"  # a rehearsal's numbers are no result
OUT="${OUT:-benchmarks/results/gpu-run}"
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" ADPF_CACHE_DIR="${ADPF_CACHE_DIR:-/tmp/adpf-cache${TINY:+-tiny}}"
run 2>&1 | tee "$OUT/gpu_log.txt"
