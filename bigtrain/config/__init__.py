"""Configuration: the typed schema, its validation and the values derived from it."""

from bigtrain.config.deepspeed import deepspeed_config
from bigtrain.config.schema import (
    Config,
    ConfigError,
    DataConfig,
    LoggingConfig,
    ModelConfig,
    OptimConfig,
    ParallelConfig,
    PrecisionConfig,
    TrainerConfig,
    from_dict,
)
from bigtrain.config.validate import Layout, validate

__all__ = [
    "Config",
    "ConfigError",
    "DataConfig",
    "LoggingConfig",
    "ModelConfig",
    "OptimConfig",
    "ParallelConfig",
    "PrecisionConfig",
    "TrainerConfig",
    "Layout",
    "deepspeed_config",
    "from_dict",
    "validate",
]
