"""The bridge from Hydra's composed tree to the typed `Config`."""

from __future__ import annotations

from pathlib import Path

from hydra import compose as hydra_compose
from hydra import initialize_config_module
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import MissingMandatoryValue

import bigtrain.conf
from bigtrain.config.paths import writable_problem
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


# Hydra's flags that take a value as the next argument.
_FLAG_VALUES = {"--config-dir", "-cd", "--config-name", "-cn", "--config-path", "-cp", "--cfg", "-c", "--package", "-p"}


def check_overrides(argv: list[str], conf_dir: Path = CONF_DIR) -> None:
    """The command line's overrides, checked before Hydra composes them, so that a preset that does
    not exist or an override without a value is one line and a config error (exit code 2) like
    every other, rather than Hydra's multi-line report and exit code 1."""
    dirs, args, i = [conf_dir], [], 0
    while i < len(argv):
        arg = argv[i]
        if arg in _FLAG_VALUES:
            if arg in ("--config-dir", "-cd") and i + 1 < len(argv):
                dirs.append(Path(argv[i + 1]))
            i += 2
            continue
        if arg.startswith(("--config-dir=", "-cd=")):
            dirs.append(Path(arg.split("=", 1)[1]))
        elif not arg.startswith("-"):
            args.append(arg)
        i += 1
    for arg in args:
        key, sep, value = arg.lstrip("+~").partition("=")
        if not sep:
            if arg.startswith("~"):
                continue  # ~key deletes a key and needs no value
            raise ConfigError(f"override {arg!r} has no value: write {key}=<value>")
        groups = [d / key for d in dirs if (d / key).is_dir()]
        if not groups or any(c in value for c in ",[]()$") or value in ("null", ""):
            continue
        if not any((g / f"{value}.yaml").is_file() for g in groups):
            presets = sorted({f.stem for g in groups for f in g.glob("*.yaml")})
            raise ConfigError(
                f"{key}={value} is not a preset: use one of {', '.join(presets)}, "
                f"or add {key}/{value}.yaml to a folder passed with --config-dir"
            )


def check_run_dir(argv: list[str]) -> None:
    """The run directory's place must be writable before Hydra creates it (Hydra would fail with
    a traceback); read from run.root / hydra.run.dir on the command line, else ./outputs."""
    values = dict(arg.lstrip("+").split("=", 1) for arg in argv if "=" in arg and not arg.startswith("-"))
    key = "hydra.run.dir" if "hydra.run.dir" in values else "run.root"
    where = values.get(key, "outputs")
    if "${" in where:
        return
    problem = writable_problem(Path(where))
    if problem:
        raise ConfigError(f"{key}={where} cannot hold the run: {problem}: pass {key}=<a writable folder>")
