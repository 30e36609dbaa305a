"""CUDA checks, run where a GPU is present (skipped elsewhere by the `gpu` marker, see conftest)."""

import dataclasses
import json

import pytest
import torch

from bigtrain.model.gpt import GPT, lm_loss
from tests.helpers.launch import PYTHON, ROOT, launch
from tests.unit.test_model import VARIANTS

pytestmark = pytest.mark.gpu

CFG = dataclasses.replace(VARIANTS["llama"], vocab_size=100)  # rope, RMSNorm, SwiGLU, GQA


def test_model_on_cuda_matches_cpu():
    """The same weights give the same logits on CUDA as on CPU (fp32; TF32 off), and bf16 autocast
    stays within 5e-2 of them."""
    torch.backends.cuda.matmul.allow_tf32 = False
    cpu = GPT(CFG, seed=0).eval()
    gpu = GPT(CFG, seed=0).cuda().eval()
    tokens = torch.randint(0, 100, (2, 32))
    with torch.no_grad():
        expected = cpu(tokens)[..., :100]
        got = gpu(tokens.cuda())[..., :100].cpu()
        with torch.autocast("cuda", dtype=torch.bfloat16):
            half = gpu(tokens.cuda())[..., :100].float().cpu()
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)
    assert (half - expected).abs().max().item() < 5e-2
    loss = lm_loss(gpu(tokens.cuda()), tokens.cuda(), torch.ones(2, 32, device="cuda"))
    loss.backward()
    assert all(p.grad is not None and p.grad.is_cuda for p in gpu.parameters())


def test_pretrain_on_one_gpu_in_bf16(tmp_path):
    proc = launch(
        [
            PYTHON,
            "launch/pretrain.py",
            "precision=bf16",
            "trainer.max_steps=20",
            "trainer.eval_interval=10",
            "trainer.eval_iters=2",
            "logging.progress_bar=false",
            f"hydra.run.dir={tmp_path}",
        ],
        ROOT,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((tmp_path / "summary.json").read_text())
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert summary["step"] == 20 and rows[-1]["loss"] < rows[0]["loss"]
    assert 0 < rows[-1]["mfu"] <= 1
