"""data.blend and data.valid_blend: Megatron-LM's `--data-path` form, parsed and checked before
any process group exists."""

from __future__ import annotations

import math
from dataclasses import dataclass

from bigtrain.config.schema import ConfigError


@dataclass(frozen=True)
class Source:
    prefix: str
    weight: float | None  # None: the blend was given without weights


def parse_blend(items: tuple, key: str) -> tuple[Source, ...]:
    """Megatron-LM's flat form: `[w1, prefix1, w2, prefix2, ...]`, or prefixes alone."""
    if not items:
        return ()
    if all(_weight(item) is None for item in items):
        return tuple(Source(_strip(str(p)), None) for p in items)
    if len(items) % 2 or any(_weight(w) is None or _weight(p) is not None for w, p in zip(items[::2], items[1::2])):
        raise ConfigError(
            f"{key}={list(items)} is not a blend: give weight, prefix pairs ({key}=[0.3,/data/a,0.7,/data/b]) "
            f"or prefixes alone ({key}=[/data/a,/data/b])"
        )
    sources = []
    for w, p in zip(items[::2], items[1::2]):
        weight = _weight(w)
        if not weight > 0 or not math.isfinite(weight):
            raise ConfigError(
                f"{key}: weight {w} for {p} must be a number above zero: give it a positive weight or remove it"
            )
        sources.append(Source(_strip(str(p)), weight))
    return tuple(sources)


def _weight(item) -> float | None:
    if isinstance(item, bool):
        return None
    try:
        return float(item)
    except (TypeError, ValueError):
        return None


def _strip(prefix: str) -> str:
    """A prefix is the path without .bin/.idx; accept either file's name for it."""
    for ext in (".bin", ".idx"):
        if prefix.endswith(ext):
            return prefix[: -len(ext)]
    return prefix
