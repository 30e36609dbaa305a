"""File helpers shared by the data path and checkpoints (no imports from the rest of bigtrain)."""

from __future__ import annotations

import hashlib
from pathlib import Path


def sha256_file(path: Path | str) -> str:
    """The SHA-256 hex digest of a file, read in 8 MB chunks (checkpoint files can be large)."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as f:
        while chunk := f.read(1 << 23):
            digest.update(chunk)
    return digest.hexdigest()
