"""Pretrain a GPT: `deepspeed launch/pretrain.py model=tiny parallel=zero1 precision=bf16 ...`.

The same as the installed `bigtrain-pretrain`. Also runs under `torchrun`, `srun` and plain
`python`. Overrides are Hydra's; see bigtrain/conf/ (also reachable as conf/) and the README.
"""

from bigtrain.entry.cli import pretrain

if __name__ == "__main__":
    pretrain()
