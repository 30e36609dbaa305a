"""The bridge from Hydra's composed tree to the typed `Config`, and the run-directory resolver."""

from __future__ import annotations

import datetime
import os
from pathlib import Path

import psutil
from hydra import compose as hydra_compose
from hydra import initialize_config_module
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import MissingMandatoryValue

import bigtrain.conf
from bigtrain.config.schema import Config, ConfigError, from_dict

# The built-in presets ship inside the package; Hydra finds them as `pkg://bigtrain.conf`, and a
# user's own presets join them with `--config-dir DIR` (or hydra.searchpath).
CONF_PACKAGE = "bigtrain.conf"
CONF_DIR = Path(bigtrain.conf.__file__).parent


def run_id() -> str:
    """A run-directory name that every rank of one launch computes identically.

    Ranks start a few milliseconds apart, so a timestamp of their own would differ. They share
    the job: Slurm's job id, or the launcher process (deepspeed, torchrun) that spawned them all,
    whose start time we format. A single process uses its own start time. Multi-node launches
    outside Slurm should pass hydra.run.dir explicitly.
    """
    if os.environ.get("SLURM_JOB_ID"):
        return f"slurm-{os.environ['SLURM_JOB_ID']}"
    proc = psutil.Process()
    if "RANK" in os.environ:  # started by a launcher
        proc = proc.parent()
    stamp = datetime.datetime.fromtimestamp(proc.create_time()).strftime("%Y-%m-%d/%H-%M-%S")
    return f"{stamp}-{proc.pid}"


def register_resolvers() -> None:
    if not OmegaConf.has_resolver("bigtrain_run_id"):
        OmegaConf.register_new_resolver("bigtrain_run_id", run_id, use_cache=True)


def to_config(tree: DictConfig, schema: type = Config):
    """Resolve and type the composed tree (Hydra's own `hydra` node excluded) as `schema`."""
    try:
        raw = OmegaConf.to_container(tree, resolve=True, throw_on_missing=True)
    except MissingMandatoryValue as err:
        raise ConfigError(
            f"missing value for '{err.full_key}': set it on the command line ({err.full_key}=...)"
        ) from None
    raw.pop("hydra", None)
    return from_dict(raw, schema)


def compose(overrides: list[str] | None = None) -> Config:
    """Compose the built-in presets without running a job: for tests, tools and notebooks."""
    register_resolvers()
    with initialize_config_module(config_module=CONF_PACKAGE, version_base=None):
        return to_config(hydra_compose(config_name="config", overrides=list(overrides or [])))
