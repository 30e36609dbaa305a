"""The bridge from Hydra's composed tree to the typed `Config`."""

from __future__ import annotations

from pathlib import Path

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
    with initialize_config_module(config_module=CONF_PACKAGE, version_base=None):
        return to_config(hydra_compose(config_name="config", overrides=list(overrides or [])))
