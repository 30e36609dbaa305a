"""Sample text from a checkpoint (any layout).

    python launch/generate.py outputs/<run> --prompt "ROMEO:" --max-tokens 200 --temperature 0.8 --top-k 50
"""
import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's bigtrain

from bigtrain.tools import generate_text
from bigtrain.train.checkpoint import CheckpointError

parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
parser.add_argument("checkpoint", help="run directory, checkpoints/ folder or one step_XXXXXXXX folder")
parser.add_argument("--prompt", default="")
parser.add_argument("--max-tokens", type=int, default=200)
parser.add_argument("--temperature", type=float, default=0.8, help="0 = greedy")
parser.add_argument("--top-k", type=int, default=50, help="0 = off")
parser.add_argument("--top-p", type=float, default=1.0, help="1 = off")
parser.add_argument("--seed", type=int, default=0)
args = parser.parse_args()
try:
    print(generate_text(args.checkpoint, args.prompt, args.max_tokens, args.temperature, args.top_k,
                        args.top_p, args.seed))
except CheckpointError as err:
    sys.exit(f"bigtrain: error: {err}")
