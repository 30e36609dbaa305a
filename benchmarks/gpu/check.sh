#!/usr/bin/env bash
# The GPU check, for a single-GPU machine with no internet (an air-gapped compute node).
# From the repository root, with a wheelhouse built beforehand by build_wheelhouse.sh:
#
#   bash benchmarks/gpu/check.sh [WHEELHOUSE] [OUT_DIR] [DATA_FILE]
#
# 1. installs bigtrain from WHEELHOUSE (default .whl) into the running python3, whose CUDA build
#    of torch stays as it is (pip resolves the rest against what is installed, offline);
# 2. runs the tests marked `gpu` (tests/gpu/: NCCL, one bf16 step per one-GPU layout, the flash
#    SDPA kernel, no host syncs in a training step);
# 3. measures bf16 MFU of llama_1b (benchmarks/gpu/mfu.py; DATA_FILE: a text corpus, else the
#    built-in one, whose tokenizer is trained first).
# Writes OUT_DIR/gpu_check.json and gpu_check.md (default benchmarks/results/gpu) and the logs.
set -uo pipefail
wh=${1:-.whl} out=${2:-benchmarks/results/gpu} data=${3:-}
mkdir -p "$out"
export PYTHONUNBUFFERED=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_ROOT_USER_ACTION=ignore
start=$(date +%s)
# resolve against what is installed; if the image's versions do not satisfy a requirement, install
# every wheel of the wheelhouse as it is (what build_wheelhouse.sh resolved)
python3 -m pip install -q --no-index --find-links "$wh" bigtrain > "$out/install.log" 2>&1 \
  || python3 -m pip install -q --no-index --no-deps "$wh"/*.whl >> "$out/install.log" 2>&1 \
  || { tail -20 "$out/install.log"; echo "install from $wh failed"; exit 3; }
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader > "$out/gpu.txt" 2>&1
timeout 300 python3 -m pytest -q -m gpu tests/gpu -p no:cacheprovider --junitxml="$out/tests.xml" \
  > "$out/tests.log" 2>&1
tests_rc=$?
tail -5 "$out/tests.log"
timeout 300 python3 benchmarks/gpu/mfu.py --out "$out" ${data:+--data-path "$data"} > "$out/mfu.out" 2>&1
mfu_rc=$?
tail -3 "$out/mfu.out"
python3 benchmarks/gpu/summarize.py "$out" "$tests_rc" "$mfu_rc" "$(( $(date +%s) - start ))"
exit $(( tests_rc || mfu_rc ))
