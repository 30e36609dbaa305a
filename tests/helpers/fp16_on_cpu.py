"""Run launch/pretrain.py with DeepSpeed's CPU accelerator claiming fp16 support (tests only).

DeepSpeed refuses fp16 on its CPU accelerator; the loss-scaling logic under test is the same on
GPUs, so tests flip that one capability flag and run the real entry point.
"""

import runpy
import sys
from pathlib import Path

from deepspeed.accelerator import get_accelerator

get_accelerator().is_fp16_supported = lambda: True
root = Path(__file__).resolve().parents[2]
sys.argv = [str(root / "launch" / "pretrain.py"), *sys.argv[1:]]
runpy.run_path(sys.argv[0], run_name="__main__")
