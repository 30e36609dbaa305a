"""What every benchmark shares: the command that ran, the machine and library versions, the
deepspeed launcher line, and writing `benchmarks/results/<stem>.{json,md}`.

Each script imports it as `from report import ...` (it lies beside them; `python benchmarks/x.py`
puts this folder first on the path). Nothing here imports test code.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
PYTHON = sys.executable


def command() -> str:
    """The command line that is running, as a reader would re-run it from the repository root."""
    script = Path(sys.argv[0]).resolve()
    shown = script.relative_to(ROOT) if script.is_relative_to(ROOT) else script
    return " ".join(["python", str(shown), *sys.argv[1:]])


def machine() -> dict:
    """The CPU (or GPU) and the library versions, for a report's header."""
    import torch  # noqa: PLC0415  (a report of a subprocess-only benchmark needs no torch at import)

    from bigtrain.metrics.peak import _cpu_name  # noqa: PLC0415

    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else None
    return {
        "machine": gpu or f"{_cpu_name()}, {torch.get_num_threads()} threads, {os.cpu_count()} cores",
        "python": platform.python_version(),
        "torch": torch.__version__,
        "deepspeed": version("deepspeed"),
        "megatron-core": version("megatron-core"),
    }


def header(report: dict) -> list[str]:
    """The Markdown lines above a table: the command, then the machine and versions."""
    return [
        f"`{report['command']}`",
        "",
        f"{report['machine']}; torch {report['torch']}, DeepSpeed {report['deepspeed']}, "
        f"megatron-core {report['megatron-core']}",
        "",
    ]


def device_tag() -> str:
    import torch  # noqa: PLC0415

    return "cuda" if torch.cuda.is_available() else "cpu"


def write(stem: str, report: dict, lines: list[str]) -> Path:
    """results/<stem>.json (the report) and results/<stem>.md (`lines`); prints the Markdown."""
    out = RESULTS / stem
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(report, indent=1) + "\n")
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines), flush=True)
    return out


def deepspeed_command(ranks: int) -> list[str]:
    """The deepspeed launcher for `ranks` local processes on a free port, running launch/pretrain.py."""
    from bigtrain.parallel.state import free_port  # noqa: PLC0415

    return [
        shutil.which("deepspeed"),
        "--num_gpus",
        str(ranks),
        "--master_port",
        str(free_port()),
        "launch/pretrain.py",
    ]


def launch(args: list[str], timeout: int = 1800, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """Run a command from the repository root, with `env` added to this process's environment;
    RuntimeError with its output's tail if it fails."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    proc = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(map(str, args))}: exit {proc.returncode}\n{proc.stderr[-3000:]}")
    return proc


def read_metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
