"""Where metrics go: console progress bar, metrics.jsonl, TensorBoard, wandb. Rank 0 only.

metrics.jsonl keeps flat names (`loss`, `val_loss`, ...); TensorBoard and wandb get dashboard
names (`train/loss`, `val/loss`, `perf/mfu`, ...: DASHBOARD_NAMES) and `train/tokens`, the tokens
consumed so far, which wandb uses as every metric's x axis.
"""

from __future__ import annotations

import json
import netrc
import os
import secrets
import sys
from pathlib import Path
from urllib.parse import urlparse

from tqdm import tqdm

from bigtrain.config.schema import LoggingConfig


def _drop_rows_after(path: Path, step: int) -> None:
    if not path.is_file():
        return
    keep = [line for line in path.read_text().splitlines() if line and json.loads(line)["step"] <= step]
    tmp = path.with_suffix(".tmp")
    tmp.write_text("".join(line + "\n" for line in keep))
    tmp.replace(path)


DASHBOARD_NAMES = {
    "loss": "train/loss",
    "lr": "train/lr",
    "grad_norm": "train/grad_norm",
    "consumed_samples": "train/samples",
    "loss_scale": "train/loss_scale",
    "val_loss": "val/loss",
    "val_ppl": "val/ppl",
    "tokens_per_sec": "perf/tokens_per_sec",
    "tflops": "perf/tflops",
    "mfu": "perf/mfu",
    "mem_gb": "perf/mem_gb",
    "step_time": "perf/step_time",
    "comm_time": "perf/comm_time",
    "comm_share": "perf/comm_share",
}
TOKENS = "train/tokens"


def dashboard(record: dict, tokens_per_sample: int) -> dict:
    """A metrics.jsonl record's numbers under dashboard names, plus the tokens consumed."""
    out = {
        DASHBOARD_NAMES.get(k, f"train/{k}"): v
        for k, v in record.items()
        if isinstance(v, (int, float)) and not isinstance(v, bool) and k != "step"
    }
    if "consumed_samples" in record:
        out[TOKENS] = record["consumed_samples"] * tokens_per_sample
    return out


def wandb_key_available() -> bool:
    """What wandb itself would find: WANDB_API_KEY, or the netrc entry `wandb login` writes."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    host = urlparse(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")).hostname
    try:
        return netrc.netrc(os.environ.get("NETRC")).authenticators(host) is not None
    except (OSError, netrc.NetrcParseError):
        return False


class Sinks:
    def __init__(
        self,
        cfg: LoggingConfig,
        run_dir: Path,
        total_steps: int,
        start_step: int,
        run_config: dict,
        name: str = "run",
        tags: tuple[str, ...] = (),
        tokens_per_sample: int = 1,
    ):
        self.tokens_per_sample = tokens_per_sample
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
            self.wandb = _wandb_run(cfg, run_dir, run_config, name, tags)

    def log(self, record: dict) -> None:
        step = record["step"]
        if self.jsonl:
            self.jsonl.write(json.dumps(record) + "\n")
        numbers = dashboard(record, self.tokens_per_sample)
        if self.tb:
            for key, value in numbers.items():
                self.tb.add_scalar(key, value, step)
        if self.wandb:
            # no step=: a resumed run may log a step again (rows past the last checkpoint), which
            # wandb refuses; train/tokens is the x axis and train/step rides along
            self.wandb.log({**numbers, "train/step": step})
        if self.bar:
            self.bar.n = step
            shown = {
                "loss": f"{record['loss']:.4f}",
                "lr": f"{record['lr']:.2e}",
                "tok/s": f"{record['tokens_per_sec']:,.0f}",
            }
            if record.get("mfu") is not None:
                shown["mfu"] = f"{100 * record['mfu']:.1f}%"
            if "moe_aux_loss" in record:
                shown["aux"] = f"{record['moe_aux_loss']:.3f}"
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
        """Idempotent: the run closes its sinks after training, and again on its way out."""
        if self.bar:
            self.bar.close()
        if self.jsonl:
            self.jsonl.close()
        if self.tb:
            self.tb.close()
        if self.wandb:
            self.wandb.finish()
        self.bar = self.jsonl = self.tb = self.wandb = None


def _wandb_run(cfg: LoggingConfig, run_dir: Path, run_config: dict, name: str, tags: tuple[str, ...]):
    """A wandb run that a resumed bigtrain run continues: its id is kept in <run dir>/wandb_run_id."""
    mode = cfg.wandb_mode
    if mode == "auto":
        mode = "online" if wandb_key_available() else "offline"
    if mode == "disabled":
        return None
    import wandb  # noqa: PLC0415  (optional sink: seconds of start-up, only when enabled)

    id_file = run_dir / "wandb_run_id"
    run_id = id_file.read_text().strip() if id_file.is_file() else secrets.token_hex(6)  # wandb: [a-z0-9]
    id_file.write_text(run_id + "\n")
    run = wandb.init(
        project=cfg.wandb_project,
        entity=cfg.wandb_entity,
        group=cfg.wandb_group,
        name=cfg.wandb_name or name,
        tags=[*tags, *cfg.wandb_tags],
        dir=str(run_dir),
        mode=mode,
        id=run_id,
        resume="allow",
        config=run_config,
    )
    run.define_metric(TOKENS)
    run.define_metric("*", step_metric=TOKENS)
    if mode == "offline":
        print(
            f"wandb: no API key found (WANDB_API_KEY or `wandb login`): logging offline; upload later with "
            f"wandb sync {run_dir / 'wandb'}/offline-run-*",
            flush=True,
        )
    return run
