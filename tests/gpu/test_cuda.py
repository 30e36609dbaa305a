"""CUDA checks, run where a GPU is present (skipped elsewhere by the `gpu` marker, see conftest)."""

import dataclasses
import json
import math
import subprocess

import pytest
import torch

from bigtrain.model.gpt import GPT, lm_loss
from tests.helpers.launch import PYTHON, ROOT, free_port, launch
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


def test_nccl_initializes_and_reduces():
    """NCCL starts for one rank and all-reduces a CUDA tensor (in a subprocess: no process group
    is left in the test process)."""
    code = (
        "import torch, torch.distributed as d; "
        f"d.init_process_group('nccl', init_method='tcp://127.0.0.1:{free_port()}', rank=0, world_size=1); "
        "t = torch.full((4,), 2.0, device='cuda'); d.all_reduce(t); torch.cuda.synchronize(); "
        "print(d.get_backend(), t.sum().item()); d.destroy_process_group()"
    )
    proc = subprocess.run([PYTHON, "-c", code], capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.split()[-2:] == ["nccl", "8.0"], proc.stdout


@pytest.mark.parametrize("parallel", ["single", "zero1", "zero2", "zero3"])
def test_one_bf16_step_per_one_gpu_layout(parallel, corpus, tmp_path):
    """Every layout that fits one GPU trains 3 bf16 steps through the entry point (NCCL, DeepSpeed's
    bf16 optimizer and ZeRO stage) with finite, GPU-measured numbers."""
    args = [
        PYTHON,
        "launch/pretrain.py",
        f"parallel={parallel}",
        "precision=bf16",
        "model=tiny_llama",
        "data=shakespeare_char",
        f"data.path={corpus}",
        "trainer.max_steps=3",
        "trainer.eval_interval=3",
        "trainer.eval_iters=1",
        "trainer.sample_tokens=0",
        "trainer.save_at_end=false",
        "logging.progress_bar=false",
        "logging.tensorboard=false",
        f"run.root={tmp_path}",
        "run.name=gpu",
    ]
    proc = launch(args, ROOT, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [json.loads(line) for line in (tmp_path / "gpu" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3]
    assert all(math.isfinite(r["loss"]) and math.isfinite(r["grad_norm"]) for r in rows)
    assert 0 < rows[-1]["mem_gb"] < torch.cuda.get_device_properties(0).total_memory / 2**30


def _bf16_model(variant: str) -> GPT:
    cfg = dataclasses.replace(VARIANTS[variant], vocab_size=100, d_model=256, n_heads=4, seq_len=256)
    return GPT(cfg, seed=0).cuda()


@pytest.mark.parametrize("variant", ["gpt2", "llama"])
def test_attention_runs_on_a_fused_sdpa_kernel(variant):
    """With SDPA's math fallback disallowed, forward and backward still run: attention uses a fused
    kernel (flash, memory-efficient or cuDNN), GQA included. The kernels seen are printed."""
    from torch.nn.attention import SDPBackend, sdpa_kernel  # noqa: PLC0415
    from torch.profiler import ProfilerActivity, profile  # noqa: PLC0415

    model = _bf16_model(variant)
    tokens = torch.randint(0, 100, (4, 256), device="cuda")
    fused = [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.CUDNN_ATTENTION]
    with sdpa_kernel(fused), torch.autocast("cuda", dtype=torch.bfloat16):
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            model(tokens).float().sum().backward()
    names = {e.name for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA}
    attention = sorted(n for n in names if any(k in n.lower() for k in ("flash", "fmha", "attention", "cudnn")))
    print(variant, "attention kernels:", attention[:6])
    assert attention, sorted(names)[:40]


def test_a_training_step_makes_no_host_sync():
    """The model's bf16 forward, loss, backward and a fused AdamW step never wait for the GPU
    (torch.cuda.set_sync_debug_mode('error') raises at any synchronizing call)."""
    model = _bf16_model("llama")
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, fused=True)
    tokens = torch.randint(0, 100, (4, 256), device="cuda")
    mask = torch.ones(4, 256, device="cuda")

    def step():
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = lm_loss(model(tokens), tokens, mask)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss

    step()  # warm-up: allocator, cuBLAS handles, autotuning
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        loss = step()
    finally:
        torch.cuda.set_sync_debug_mode(0)
    assert math.isfinite(loss.item())
