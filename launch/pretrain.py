"""Pretrain a GPT: `deepspeed launch/pretrain.py model=tiny parallel=zero1 precision=bf16 ...`.

Also runs under `torchrun` and plain `python`. Overrides are Hydra's; see conf/ and the README.
"""
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's bigtrain

# The deepspeed launcher appends --local_rank=N, which Hydra would reject as an override.
for i, arg in enumerate(list(sys.argv)):
    if arg.startswith("--local_rank"):
        value = arg.split("=", 1)[1] if "=" in arg else sys.argv[i + 1]
        os.environ.setdefault("LOCAL_RANK", value)
sys.argv = [a for i, a in enumerate(sys.argv)
            if not a.startswith("--local_rank") and not (i > 0 and sys.argv[i - 1] == "--local_rank")]

import hydra  # noqa: E402
from hydra.core.hydra_config import HydraConfig  # noqa: E402

from bigtrain.config.hydra import CONF_DIR, register_resolvers  # noqa: E402
from bigtrain.run import main  # noqa: E402

register_resolvers()


@hydra.main(config_path=str(CONF_DIR), config_name="config", version_base=None)
def pretrain(cfg) -> None:
    sys.exit(main(cfg, HydraConfig.get().runtime.output_dir))


if __name__ == "__main__":
    pretrain()
