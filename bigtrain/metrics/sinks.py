"""Where metrics go: console progress bar, metrics.jsonl, TensorBoard, wandb. Rank 0 only."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from tqdm import tqdm

from bigtrain.config.schema import LoggingConfig


def _drop_rows_after(path: Path, step: int) -> None:
    if not path.is_file():
        return
    keep = [line for line in path.read_text().splitlines() if line and json.loads(line)["step"] <= step]
    tmp = path.with_suffix(".tmp")
    tmp.write_text("".join(line + "\n" for line in keep))
    tmp.replace(path)


class Sinks:
    def __init__(self, cfg: LoggingConfig, run_dir: Path, total_steps: int, start_step: int, run_config: dict):
        self.bar = self.jsonl = self.tb = self.wandb = None
        if cfg.progress_bar:
            self.bar = tqdm(
                total=total_steps,
                initial=start_step,
                desc="train",
                unit="step",
                dynamic_ncols=True,
                file=sys.stdout,
                mininterval=1.0,
            )
        if cfg.jsonl:
            path = run_dir / "metrics.jsonl"
            _drop_rows_after(path, start_step)  # steps a crashed run logged past its last checkpoint
            self.jsonl = open(path, "a", buffering=1)
        if cfg.tensorboard:
            # optional sinks: tensorboard and wandb load only when enabled (seconds of start-up each)
            from torch.utils.tensorboard import SummaryWriter  # noqa: PLC0415

            self.tb = SummaryWriter(log_dir=str(run_dir / "tensorboard"))
        if cfg.wandb:
            import wandb  # noqa: PLC0415

            mode = "online" if os.environ.get("WANDB_API_KEY") else "offline"  # no key: log locally
            self.wandb = wandb.init(
                project=cfg.wandb_project,
                dir=str(run_dir),
                mode=mode,
                config=run_config,
                name=run_dir.name,
                resume="allow",
            )

    def log(self, record: dict) -> None:
        step = record["step"]
        if self.jsonl:
            self.jsonl.write(json.dumps(record) + "\n")
        numbers = {k: v for k, v in record.items() if isinstance(v, (int, float)) and k != "step"}
        if self.tb:
            for key, value in numbers.items():
                self.tb.add_scalar(key, value, step)
        if self.wandb:
            self.wandb.log(numbers, step=step)
        if self.bar:
            self.bar.n = step
            shown = {
                "loss": f"{record['loss']:.4f}",
                "lr": f"{record['lr']:.2e}",
                "tok/s": f"{record['tokens_per_sec']:,.0f}",
            }
            if record.get("mfu") is not None:
                shown["mfu"] = f"{100 * record['mfu']:.1f}%"
            if "val_loss" in record:
                shown["val"] = f"{record['val_loss']:.4f}"
            self.bar.set_postfix(shown, refresh=True)

    def write(self, message: str) -> None:
        """Print without tearing the progress bar."""
        if self.bar:
            self.bar.write(message)
        else:
            print(message, flush=True)

    def close(self) -> None:
        if self.bar:
            self.bar.close()
        if self.jsonl:
            self.jsonl.close()
        if self.tb:
            self.tb.close()
        if self.wandb:
            self.wandb.finish()
