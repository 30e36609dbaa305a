#!/usr/bin/env bash
# Build a wheelhouse that installs bigtrain on a machine with no internet (an air-gapped GPU node),
# from a machine with PyPI. Run from the repository root:
#
#   bash benchmarks/gpu/build_wheelhouse.sh [DIR] [--python 3.12] [--present FILE]
#
# DIR (default .whl): bigtrain's wheel, a pure-Python DeepSpeed wheel built from its sdist (PyPI
# ships no DeepSpeed wheel), and every other dependency as a binary wheel for the target Python on
# manylinux x86_64, resolved here. torch, its CUDA libraries and triton are left out: the target
# has its own CUDA build of torch. --present FILE lists package names (one per line, or separated
# by commas or spaces) the target already has, to leave out too (a smaller wheelhouse to carry).
# On the target: python3 -m pip install --no-index --find-links DIR bigtrain
set -euo pipefail
out=.whl py=3.12 present=""
while [ $# -gt 0 ]; do
  case "$1" in
    --python) py=$2; shift 2 ;;
    --present) present=$2; shift 2 ;;
    *) out=$1; shift ;;
  esac
done
mkdir -p "$out"
platforms=(--platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64
           --platform manylinux2014_x86_64 --platform manylinux1_x86_64)
target=(--only-binary=:all: --python-version "$py" --implementation cp "${platforms[@]}")
version() { python -c "import importlib.metadata as m; print(m.version('$1'))"; }

pip wheel -q --no-deps -w "$out" .
pip wheel -q --no-deps -w "$out" "deepspeed==$(version deepspeed)"
# pure-Python dependencies published only as sdists: wheels built here work anywhere
pip wheel -q --no-deps -w "$out" "antlr4-python3-runtime==$(version antlr4-python3-runtime)" hjson

resolve=$(mktemp -d)
pip install -q --dry-run --ignore-installed --report "$resolve/report.json" --target "$resolve/site" \
  --find-links "$out" "${target[@]}" "$out"/bigtrain-*.whl
python - "$resolve/report.json" "$present" > "$resolve/wanted.txt" <<'PY'
import json, re, sys
from pathlib import Path

def norm(name):
    return re.sub(r"[-_.]+", "-", name).lower()

report, present = json.loads(Path(sys.argv[1]).read_text()), sys.argv[2]
skip = {"torch", "triton", "bigtrain", "deepspeed", "antlr4-python3-runtime", "hjson"}
if present:
    lines = [line for line in Path(present).read_text().splitlines() if not line.startswith("#")]
    skip |= {norm(n) for n in re.split(r"[\s,]+", " ".join(lines)) if n}
for item in report["install"]:
    meta = item["metadata"]
    name = norm(meta["name"])
    if name in skip or name.startswith("nvidia-") or name.startswith("cuda-"):
        continue
    print(f"{meta['name']}=={meta['version']}")
PY
if [ -s "$resolve/wanted.txt" ]; then
  pip download -q --no-deps "${target[@]}" -d "$out" -r "$resolve/wanted.txt"
fi
rm -rf "$resolve"
du -sh "$out"
ls "$out"
