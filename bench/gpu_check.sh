#!/usr/bin/env bash
# One prepared GPU check for hvit (issue 17): ≤ 8 minutes on one H200, no network, nothing downloaded.
# Writes gpu_check.json (+ gpu_check.log) to $OUT when set, else to bench/. Extra arguments go to
# bench/gpu_check.py (e.g. --budget-s 400, --peak-tflops 989, --only recipe, --dry-run for a CPU run).
#
#     bash bench/gpu_check.sh                  # every section
#     bash bench/gpu_check.sh --only recipe    # the CUB recipe's wall time alone
set -u
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
DEST=${OUT:-bench}
mkdir -p "$DEST"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 \
       TOKENIZERS_PARALLELISM=false TQDM_DISABLE=1 TRANSFORMERS_VERBOSITY=warning
echo "[$(date +%H:%M:%S)] gpu_check start: $($PY -c 'import sys, torch; print(sys.version.split()[0], "torch", torch.__version__, "cuda", torch.version.cuda, "available", torch.cuda.is_available())' 2>&1)"
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv,noheader
set -o pipefail
$PY -u bench/gpu_check.py --out "$DEST/gpu_check$([[ " $* " == *" --dry-run "* ]] && echo _dry).json" "$@" 2>&1 | tee "$DEST/gpu_check.log"
rc=$?
echo "[$(date +%H:%M:%S)] gpu_check done (exit $rc); JSON and log in $DEST"
exit $rc
