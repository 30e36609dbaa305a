"""The bridge from Hydra's composed tree to the typed `Config`, and the run-directory resolver."""
from __future__ import annotations

import datetime
import os
from pathlib import Path

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import MissingMandatoryValue

from bigtrain.config.schema import Config, ConfigError, from_dict

CONF_DIR = Path(__file__).resolve().parents[2] / "conf"


def run_id() -> str:
    """A run-directory name that every rank of one launch computes identically.

    Ranks start a few milliseconds apart, so a timestamp of their own would differ. They share
    the job: Slurm's job id, or the launcher process (deepspeed, torchrun) that spawned them all,
    whose start time we format. A single process uses its own start time. Multi-node launches
    outside Slurm should pass hydra.run.dir explicitly.
    """
    if os.environ.get("SLURM_JOB_ID"):
        return f"slurm-{os.environ['SLURM_JOB_ID']}"
    import psutil

    proc = psutil.Process()
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 or "LOCAL_RANK" in os.environ:
        proc = proc.parent()
    stamp = datetime.datetime.fromtimestamp(proc.create_time()).strftime("%Y-%m-%d/%H-%M-%S")
    return f"{stamp}-{proc.pid}"


def register_resolvers() -> None:
    if not OmegaConf.has_resolver("bigtrain_run_id"):
        OmegaConf.register_new_resolver("bigtrain_run_id", run_id, use_cache=True)


def to_config(tree: DictConfig) -> Config:
    """Resolve and type the composed tree (Hydra's own `hydra` node excluded)."""
    try:
        raw = OmegaConf.to_container(tree, resolve=True, throw_on_missing=True)
    except MissingMandatoryValue as err:
        raise ConfigError(f"missing value for '{err.full_key}': set it on the command line "
                          f"({err.full_key}=...)") from None
    raw.pop("hydra", None)
    return from_dict(raw)


def compose(overrides: list[str] | None = None) -> Config:
    """Compose `conf/` without running a job: for tests, tools and notebooks."""
    from hydra import compose as hydra_compose, initialize_config_dir

    register_resolvers()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base=None):
        return to_config(hydra_compose(config_name="config", overrides=list(overrides or [])))
