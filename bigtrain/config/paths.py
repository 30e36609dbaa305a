"""Where files can go, checked before anything is written: the run directory's place (before Hydra
creates it) and the disk a checkpoint will land on."""

from __future__ import annotations

import os
from pathlib import Path


def nearest_existing(path: Path) -> Path:
    """`path`, or its nearest ancestor that exists (what a check can look at without creating)."""
    probe = Path(path).absolute()
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    return probe


def writable_problem(path: Path) -> str | None:
    """Why files cannot be created under `path` (created if missing), or None."""
    probe = nearest_existing(path)
    if not probe.is_dir():
        return f"{probe} is a file, not a folder"
    if not os.access(probe, os.W_OK | os.X_OK):
        return f"{probe} is not writable (permissions, or a read-only filesystem)"
    return None
