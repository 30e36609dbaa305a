"""The real launchers on CPU: deepspeed (the main path); torchrun and plain python are in test_relaunch.py."""

import json
import math
import shutil

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from tests.helpers.launch import PYTHON, ROOT, free_port, launch, read_metrics
from tests.helpers.wandb_file import history, run_id

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
    # the README's command: the launcher's own INFO banner off (--log_level=warning)
    command = [deepspeed, "--log_level=warning", "--num_gpus", "1", "launch/pretrain.py"]
    proc = launch([*command, *tiny_args(corpus, run_dir, 50)], ROOT)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    # Only bigtrain talks: no library INFO line (DeepSpeed's engine, megatron-core's datasets)
    console = proc.stdout + proc.stderr
    assert "INFO" not in console and "Megatron-FSDP" not in console and "Warning" not in console, console[-3000:]
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


@pytest.mark.parametrize(
    "override,message",
    [
        ("model.n_heads=3", "model.d_model=256 is not divisible by model.n_heads=3"),
        ("model=gpt5", "model=gpt5 is not a preset: use one of gpt2_124m, gpt2_1_3b"),  # Hydra's would exit 1
        ("parallel.zero_stage", "override 'parallel.zero_stage' has no value: write parallel.zero_stage=<value>"),
        ("+trainer.max_step=3", "unknown config key 'trainer.max_step' (value 3): did you mean 'trainer.max_steps'?"),
    ],
)
def test_config_error_is_one_line_before_any_process_group(tmp_path, override, message):
    proc = launch([PYTHON, "launch/pretrain.py", f"hydra.run.dir={tmp_path}", override], ROOT, timeout=120)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"bigtrain: error: {message}"), proc.stderr
    assert not (tmp_path / "metrics.jsonl").exists()


def test_missing_corpus_is_a_clear_error_printed_once(tmp_path):
    """On 2 ranks: every rank stops with exit code 2, and rank 0 alone prints the line."""
    command = [shutil.which("deepspeed"), "--log_level=warning", "--num_gpus", "2", "--master_port", str(free_port())]
    args = ["launch/pretrain.py", f"hydra.run.dir={tmp_path}", "data=text", f"data.path={tmp_path}/nope.txt"]
    proc = launch([*command, *args], ROOT, timeout=180)
    assert proc.returncode == 2
    errors = [line for line in proc.stderr.splitlines() if "error" in line.lower()]
    assert len(errors) == 1 and errors[0].startswith("bigtrain: error: "), proc.stderr[-3000:]
    assert "does not exist or is not a file: pass an existing text file" in errors[0]


def test_wandb_offline_and_tensorboard_follow_a_resumed_run(corpus, cache_dir, tmp_path):
    """No key: wandb logs offline and says how to sync. Read back with the run file's own records
    and TensorBoard's event reader: dashboard names, the values of metrics.jsonl, one wandb run id
    across a stop and a relaunch."""
    run_dir = tmp_path / "run"
    env = {"WANDB_API_KEY": "", "NETRC": str(tmp_path / "no-netrc"), "WANDB_SILENT": "true"}
    args = [
        PYTHON,
        "launch/pretrain.py",
        *tiny_args(corpus, run_dir, 4, ["logging.wandb=true", "trainer.eval_interval=2"]),
    ]
    stopped = launch(args, ROOT, env={**env, "BIGTRAIN_FAULT": "after_step:2"})
    assert stopped.returncode == 75, stopped.stdout[-2000:] + stopped.stderr[-3000:]
    assert "logging offline; upload later with wandb sync" in stopped.stdout
    # the relaunch has a key (explicitly offline) and another secret in its environment: neither
    # may reach the console, configs, metrics, wandb's or TensorBoard's files or checkpoints
    secrets = {"WANDB_API_KEY": "wandb-key-0123456789abcdef0123456789abcdef", "HF_TOKEN": "hf_secret_token_42"}
    resumed = launch([*args, "logging.wandb_mode=offline"], ROOT, env={**env, **secrets})
    assert resumed.returncode == 0, resumed.stdout[-2000:] + resumed.stderr[-3000:]
    rows = {r["step"]: r for r in read_metrics(run_dir)}
    assert sorted(rows) == [1, 2, 3, 4]
    written = [f for f in run_dir.rglob("*") if f.is_file()]
    assert len(written) > 20 and any(f.suffix == ".wandb" for f in written)
    for secret in secrets.values():
        assert secret not in resumed.stdout + resumed.stderr
        leaks = [f for f in written if secret.encode() in f.read_bytes()]
        assert not leaks, leaks

    files = sorted((run_dir / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(files) == 2  # one per launch, both the same wandb run
    kept = (run_dir / "wandb_run_id").read_text().strip()
    assert [run_id(f) for f in files] == [kept, kept]
    logged = [h for f in files for h in history(f) if "train/loss" in h]
    assert [h["train/step"] for h in logged] == [1, 2, 3, 4]
    for h in logged:
        row = rows[h["train/step"]]
        assert h["train/loss"] == pytest.approx(row["loss"]) and h["perf/mfu"] == pytest.approx(row["mfu"])
        assert h["train/tokens"] == row["consumed_samples"] * 64  # model.seq_len: the x axis
    assert [h["val/loss"] for h in logged if "val/loss" in h] == pytest.approx(
        [rows[2]["val_loss"], rows[4]["val_loss"]]
    )

    events = EventAccumulator(str(run_dir / "tensorboard")).Reload()
    assert {"train/loss", "val/loss", "perf/tokens_per_sec", "train/tokens"} <= set(events.Tags()["scalars"])
    losses = {e.step: e.value for e in events.Scalars("train/loss")}
    assert sorted(losses) == [1, 2, 3, 4]
    assert all(losses[s] == pytest.approx(rows[s]["loss"], rel=1e-6) for s in losses)
