"""The real launchers on CPU: deepspeed (the main path), torchrun and plain python."""

import json
import math
import shutil

import pytest

from tests.helpers.launch import PYTHON, ROOT, launch, read_metrics

pytestmark = pytest.mark.e2e

REQUIRED = {"step", "loss", "lr", "grad_norm", "tokens_per_sec", "tflops", "mfu"}


def tiny_args(corpus, run_dir, steps, extra=()):
    return [
        "model=tiny",
        "data=shakespeare_char",
        f"data.path={corpus}",
        f"hydra.run.dir={run_dir}",
        f"trainer.max_steps={steps}",
        "trainer.micro_batch_size=8",
        "trainer.global_batch_size=16",
        "trainer.eval_interval=25",
        "trainer.eval_iters=4",
        "model.seq_len=64",
        "optim.lr=2e-3",
        "optim.warmup_steps=5",
        "trainer.sample_tokens=40",
        "logging.progress_bar=false",
        *extra,
    ]


def test_deepspeed_launcher_trains_tiny_model(corpus, cache_dir, tmp_path):
    run_dir = tmp_path / "run"
    deepspeed = shutil.which("deepspeed")
    assert deepspeed, "the deepspeed launcher is installed with the package"
    proc = launch([deepspeed, "--num_gpus", "1", "launch/pretrain.py", *tiny_args(corpus, run_dir, 50)], ROOT)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    rows = read_metrics(run_dir)
    assert [r["step"] for r in rows] == list(range(1, 51))
    for row in rows:
        assert REQUIRED <= row.keys(), row
        assert all(math.isfinite(row[k]) for k in REQUIRED), row
    assert [r["step"] for r in rows if "val_loss" in r] == [25, 50]
    first, last = rows[0]["loss"], sum(r["loss"] for r in rows[-5:]) / 5
    assert first > 4.0 and last < first - 1.2, (first, last)  # ln(68) ≈ 4.2 → below ~3
    assert rows[-1]["val_loss"] < rows[0]["loss"] - 1.0
    assert rows[0]["lr"] < rows[5]["lr"]  # warmup
    assert 0 < rows[-1]["mfu"] < 1.5 and rows[-1]["tokens_per_sec"] > 0
    # Hydra's config, the checkpoint and the summary with a sample are in the run directory.
    assert (run_dir / ".hydra" / "config.yaml").is_file()
    ckpt = run_dir / "checkpoints" / "step_00000050"
    assert (ckpt / "mp_rank_00_model_states.pt").stat().st_size > 1_000_000
    assert (run_dir / "checkpoints" / "latest").read_text().strip() == "step_00000050"
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["val_loss"] == pytest.approx(rows[-1]["val_loss"])
    assert len(summary["sample"]) > 20
    assert "validation loss" in proc.stdout and "perplexity" in proc.stdout


@pytest.mark.parametrize("launcher", ["torchrun", "python"])
def test_other_launchers(launcher, corpus, cache_dir, tmp_path):
    run_dir = tmp_path / launcher
    prefix = [PYTHON, "-m", "torch.distributed.run", "--nproc_per_node", "1"] if launcher == "torchrun" else [PYTHON]
    proc = launch([*prefix, "launch/pretrain.py", *tiny_args(corpus, run_dir, 3)], ROOT)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert [r["step"] for r in read_metrics(run_dir)] == [1, 2, 3]
    assert (run_dir / "checkpoints" / "step_00000003").is_dir()


def test_config_error_is_one_line_before_any_process_group(tmp_path):
    proc = launch([PYTHON, "launch/pretrain.py", f"hydra.run.dir={tmp_path}", "model.n_heads=3"], ROOT, timeout=120)
    assert proc.returncode == 2
    assert "bigtrain: error: model.d_model=256 is not divisible by model.n_heads=3" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "metrics.jsonl").exists()


def test_missing_corpus_is_a_clear_error(tmp_path):
    proc = launch(
        [PYTHON, "launch/pretrain.py", f"hydra.run.dir={tmp_path}", "data=text", f"data.path={tmp_path}/nope.txt"],
        ROOT,
        timeout=180,
    )
    assert proc.returncode == 2
    assert "does not exist or is not a file: pass an existing text file" in proc.stderr


def test_wandb_offline_and_tensorboard(corpus, cache_dir, tmp_path):
    run_dir = tmp_path / "run"
    env = {"WANDB_API_KEY": "", "WANDB_SILENT": "true"}
    proc = launch([PYTHON, "launch/pretrain.py", *tiny_args(corpus, run_dir, 3, ["logging.wandb=true"])], ROOT, env=env)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    offline = list((run_dir / "wandb").glob("offline-run-*/run-*.wandb"))
    assert offline and offline[0].stat().st_size > 0
    events = list((run_dir / "tensorboard").glob("events.out.tfevents.*"))
    assert events and events[0].stat().st_size > 100
