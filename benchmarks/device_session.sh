#!/usr/bin/env bash
# One session on a lent GPU machine, as one command (the device's time is short): the training loop
# against its bare steps (benchmarks/gpu_run.sh, about 4 minutes, alone on the card), then the
# book's records (benchmarks/make_records.py: every record's seeds and row groups side by side,
# each process under LIMIT seconds). The real faces travel as carry/*.npz (benchmarks/device_data.py).
#
#   bash benchmarks/device_session.sh OUT [LIMIT]
#
# OUT gets: machine.txt, bench.log, records.log, results.tgz (the bench's JSON and table, the
# merged records, every process's log, the recipe sweep) and utkface-adpf-seed0.pt (seed 0's ADPF
# on UTKFace, for looking at its maps; not committed: it is learned from research data).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${1:?usage: bash benchmarks/device_session.sh OUT [LIMIT]}"
LIMIT="${2:-320}"
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 ADPF_CACHE_DIR=/tmp/adpf-cache
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv; nproc; python3 --version
  python3 -c "import torch; print('torch', torch.__version__)"; git rev-parse HEAD 2>/dev/null; date -u; } > "$OUT/machine.txt" 2>&1
start=$SECONDS
timeout -k 5 250 bash benchmarks/gpu_run.sh "$OUT/bench" > "$OUT/bench.log" 2>&1
echo "bench: $((SECONDS - start)) s" >> "$OUT/machine.txt"
python3 benchmarks/make_records.py "$OUT/rec" --limit "$LIMIT" > "$OUT/records.log" 2>&1
echo "records: $((SECONDS - start)) s" >> "$OUT/machine.txt"
find /tmp/adpf-cache/runs -name checkpoint.pt -path "*fusion-*" -newer "$OUT/machine.txt" > "$OUT/fusion-checkpoints.txt" 2>/dev/null
(cd "$OUT" && tar czf results.tgz --exclude='*.pt' bench rec)
python3 - "$OUT" <<'PY'
import json, sys
from pathlib import Path
out = Path(sys.argv[1])
part = out / "rec" / "parts" / "ablation-utkface-seed0-0.json"
if part.is_file():
    rows = json.loads(part.read_text())["rows"]
    ckpt = next((r["checkpoint"] for r in rows if r["model"] == "ADPF"), None)
    if ckpt and Path(ckpt).is_file():
        (out / "utkface-adpf-seed0.pt").write_bytes(Path(ckpt).read_bytes())
PY
ls -la "$OUT"
