"""bigtrain as users install it: sdist → wheel → a fresh virtual environment outside the checkout.

`python -m build` makes the sdist, then the wheel from the unpacked sdist, so the presets and
scripts the installed copy has went through both.

The venv sees the machine's site-packages (`--system-site-packages`) for torch, DeepSpeed and the
rest, so pip resolves the wheel's dependencies without the network; bigtrain itself comes only
from the wheel, which the test checks.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bigtrain.parallel.state import free_port
from tests.helpers.launch import ROOT, launch

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

TINY = [
    "trainer.max_steps=3",
    "trainer.eval_interval=3",
    "trainer.eval_iters=1",
    "trainer.sample_tokens=8",
    "trainer.global_batch_size=4",
    "trainer.micro_batch_size=2",
    "data.max_bytes=300000",
    "logging.progress_bar=false",
    "logging.tensorboard=false",
]


@pytest.fixture(scope="module")
def venv(tmp_path_factory) -> Path:
    base = tmp_path_factory.mktemp("install")
    built = subprocess.run(
        [sys.executable, "-m", "build", "--no-isolation", "--outdir", str(base / "dist"), str(ROOT)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert built.returncode == 0, built.stdout[-3000:] + built.stderr[-3000:]
    wheels, sdists = sorted((base / "dist").glob("*.whl")), sorted((base / "dist").glob("*.tar.gz"))
    assert len(wheels) == 1 and len(sdists) == 1, os.listdir(base / "dist")
    env = base / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", str(env)], check=True, timeout=300)
    # ensurepip's old setuptools would shadow the newer one torch requires: use the machine's.
    subprocess.run(
        [str(env / "bin" / "python"), "-m", "pip", "uninstall", "-q", "-y", "setuptools"],
        capture_output=True,
        timeout=300,
    )
    pip = subprocess.run(
        [str(env / "bin" / "python"), "-m", "pip", "install", "--no-index", str(wheels[0])],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert pip.returncode == 0, pip.stdout[-3000:] + pip.stderr[-3000:]
    return env


def run_in(cwd: Path, args: list[str]) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    return launch(args, cwd, timeout=600, env={**env, "OMP_NUM_THREADS": "1"})


def test_wheel_ships_package_configs_and_scripts(venv, tmp_path):
    where = run_in(
        tmp_path,
        [
            str(venv / "bin" / "python"),
            "-c",
            "import bigtrain, bigtrain.config.hydra as h; print(bigtrain.__file__); "
            "print(sorted(p.name for p in h.CONF_DIR.glob('*/*.yaml')))",
        ],
    )
    assert where.returncode == 0, where.stderr[-2000:]
    origin, presets = where.stdout.splitlines()
    assert origin.startswith(str(venv)), origin  # the installed copy, not the checkout
    assert "tiny.yaml" in presets and "shakespeare_char_cpu.yaml" in presets and "3d.yaml" in presets
    for script in ("bigtrain-pretrain", "bigtrain-prepare", "bigtrain-plan", "bigtrain-export", "bigtrain-generate"):
        assert (venv / "bin" / script).is_file(), script
    plan = run_in(tmp_path, [str(venv / "bin" / "bigtrain-plan"), "model=tiny", "cluster.gpus_per_node=2"])
    assert plan.returncode == 0 and "layouts fit, fastest first" in plan.stdout, plan.stderr[-2000:]


def test_installed_pretrain_runs_and_takes_a_user_config_dir(venv, tmp_path):
    """`bigtrain-pretrain` from the venv trains on the built-in corpus; `--config-dir` adds a user's
    own model preset (which extends a built-in one) without touching the package."""
    run = run_in(tmp_path, [str(venv / "bin" / "bigtrain-pretrain"), *TINY, f"hydra.run.dir={tmp_path / 'run'}"])
    assert run.returncode == 0, run.stderr[-3000:]
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["step"] == 3 and 0 < summary["val_loss"] < 12

    conf = tmp_path / "my_conf" / "model"
    conf.mkdir(parents=True)
    (conf / "tiny_wide.yaml").write_text("defaults:\n  - tiny\n  - _self_\nname: tiny_wide\nd_model: 96\nn_heads: 3\n")
    run = run_in(
        tmp_path,
        [
            str(venv / "bin" / "bigtrain-pretrain"),
            "--config-dir",
            str(tmp_path / "my_conf"),
            "model=tiny_wide",
            *TINY,
            f"hydra.run.dir={tmp_path / 'wide'}",
        ],
    )
    assert run.returncode == 0, run.stderr[-3000:]
    assert "model: tiny_wide," in run.stdout
    saved = json.loads(
        (tmp_path / "wide" / "checkpoints" / "latest")
        .with_name((tmp_path / "wide" / "checkpoints" / "latest").read_text())
        .joinpath("bigtrain", "meta.json")
        .read_text()
    )
    assert (saved["model"]["name"], saved["model"]["d_model"], saved["model"]["n_heads"]) == ("tiny_wide", 96, 3)

    # The deepspeed launcher runs the console script as a Python file, as `deepspeed $(which bigtrain-pretrain)`.
    launcher = [
        str(venv / "bin" / "python"),
        "-m",
        "deepspeed.launcher.runner",
        "--num_gpus",
        "2",
        "--master_port",
        str(_free_port()),
        str(venv / "bin" / "bigtrain-pretrain"),
        "parallel=zero1",
        *TINY,
        f"hydra.run.dir={tmp_path / 'ds'}",
    ]
    run = run_in(tmp_path, launcher)
    assert run.returncode == 0, run.stderr[-3000:]
    assert json.loads((tmp_path / "ds" / "summary.json").read_text())["step"] == 3


def _free_port() -> int:

    return free_port()
