"""Damaged checkpoints (issue 12): a truncated or corrupted file is found by the manifest written
at save time; auto-resume falls back to the previous complete checkpoint and says so, and resumes
bit for bit from it; a checkpoint of another tokenizer or model shape is refused, naming the
difference."""

import json

import pytest

from bigtrain.train.checkpoint import MANIFEST, CheckpointError, damage, read_meta, resolve
from tests.helpers import pool
from tests.helpers.launch import read_metrics, short_run

pytestmark = pytest.mark.pool


def train(root, corpus, steps: int, extra=()):
    """`python launch/pretrain.py` with the fault tests' short run, on a warm worker."""
    return pool.run(1, [*short_run(root, "damaged", corpus, steps), *extra])


def test_damaged_checkpoint_falls_back_to_the_previous_one(corpus, cache_dir, tmp_path):
    first = train(tmp_path, corpus, 8)
    assert first.returncode == 0, first.stderr[-3000:]
    run, ckpts = tmp_path / "damaged", tmp_path / "damaged" / "checkpoints"
    before = {r["step"]: r["loss"] for r in read_metrics(run)}
    manifest = json.loads((ckpts / "step_00000008" / "bigtrain" / MANIFEST).read_text())
    assert "mp_rank_00_model_states.pt" in manifest and "rng/rank0.pt" in manifest
    assert any(name.endswith(".safetensors") for name in manifest)

    # a flipped byte in the layout-independent copy: same size, another hash
    weights = next(ckpts.glob("step_00000008/bigtrain/*.safetensors"))
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0xFF
    weights.write_bytes(bytes(data))
    assert "does not match the SHA-256 recorded when it was saved" in damage(ckpts / "step_00000008")
    with pytest.raises(CheckpointError, match="step_00000004"):  # the tools name the previous one
        resolve(run)
    # and a truncated native file
    native = ckpts / "step_00000008" / "mp_rank_00_model_states.pt"
    native.write_bytes(native.read_bytes()[:1000])

    again = train(tmp_path, corpus, 10)
    assert again.returncode == 0, again.stderr[-3000:]
    out = again.stdout
    assert "step_00000008 is damaged" in out and "falling back to the previous one" in out, out[-3000:]
    assert f"resuming from {ckpts / 'step_00000004'} at step 4" in out
    rows = read_metrics(run)
    assert [r["step"] for r in rows] == list(range(1, 11))
    # steps 5-8 trained again from step 4's checkpoint: the same losses as the first time
    assert [r["loss"] for r in rows[4:8]] == [before[s] for s in range(5, 9)]


def test_checkpoint_of_another_tokenizer_or_shape_is_refused(corpus, cache_dir, tmp_path):
    first = train(tmp_path, corpus, 4)
    assert first.returncode == 0, first.stderr[-3000:]
    other = tmp_path / "other.txt"
    other.write_text("abc def\n" * 3000 + "xyz\n" * 3000)  # 8 distinct characters, not 65
    proc = train(tmp_path, other, 8)
    assert proc.returncode == 2
    line = proc.stderr.strip().splitlines()[-1]
    saved = read_meta(tmp_path / "damaged" / "checkpoints" / "step_00000004")["tokenizer"]["vocab_size"]
    assert f"was trained with another tokenizer ({saved} ids" in line and "this run's (" in line, proc.stderr[-2000:]
    proc = train(tmp_path, corpus, 8, ["model.n_layers=3"])
    assert proc.returncode == 2
    assert "holds a different model (model.n_layers: checkpoint 2, requested 3)" in proc.stderr, proc.stderr[-2000:]
