"""Export a checkpoint (any layout) to a Hugging Face folder.

    python launch/export_hf.py outputs/<run> hf_out/     # or .../checkpoints/step_00001000
"""
import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's bigtrain

from bigtrain.model.hf import ExportError
from bigtrain.tools import export_hf
from bigtrain.train.checkpoint import CheckpointError

parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
parser.add_argument("checkpoint", help="run directory, checkpoints/ folder or one step_XXXXXXXX folder")
parser.add_argument("out", help="output folder")
args = parser.parse_args()
try:
    print(f"wrote {export_hf(args.checkpoint, args.out)} to {args.out}")
except (CheckpointError, ExportError) as err:
    sys.exit(f"bigtrain: error: {err}")
