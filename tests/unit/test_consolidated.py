"""The consolidated copy's streaming writer: shards joined in blocks give the full tensor, the
file it writes is a valid safetensors file, and the byte counter follows tensors as Python frees
them."""

import gc

import pytest
import torch
from safetensors.torch import load_file

from bigtrain.train import consolidated
from bigtrain.train.consolidated import SaveStats, _row_blocks, _StreamingFile

CASES = [(0, (3, 4)), (1, (3, 4)), (0, (5,)), (1, (2, 3, 4)), (2, (2, 3, 4))]


@pytest.mark.parametrize("dim,local", CASES)
@pytest.mark.parametrize("tp", [1, 2, 3])
@pytest.mark.parametrize("block_bytes", [4, 1 << 20])
def test_row_blocks_join_shards_like_torch_cat(dim, local, tp, block_bytes, monkeypatch):
    monkeypatch.setattr(consolidated, "BLOCK_BYTES", block_bytes)
    shards = [torch.randn(local) for _ in range(tp)]
    full = torch.cat(shards, dim=dim)
    for rows in (full.shape[0], full.shape[0] - 1):  # the vocabulary's padding rows are dropped
        blocks = list(_row_blocks(torch.stack(shards), dim, rows))
        assert all(b.is_contiguous() for b in blocks)
        assert torch.equal(torch.cat([b.reshape(-1) for b in blocks]), full[:rows].reshape(-1))


def test_streaming_file_is_safetensors(tmp_path):
    tensors = {"b": torch.randn(3, 5), "a": torch.randn(7), "c": torch.randn(2, 2, 2)}
    stats = SaveStats()
    out = _StreamingFile(tmp_path / "x.safetensors", [(k, tuple(v.shape)) for k, v in tensors.items()])
    for name, value in tensors.items():
        out.write(name, iter(value.split(2)), stats)  # several blocks per tensor
    out.close()
    back = load_file(tmp_path / "x.safetensors")
    assert back.keys() == tensors.keys()
    assert all(torch.equal(back[k], v) for k, v in tensors.items())
    assert stats.written_bytes == 4 * sum(v.numel() for v in tensors.values())


def test_streaming_file_refuses_a_tensor_out_of_order_or_short(tmp_path):
    out = _StreamingFile(tmp_path / "x.safetensors", [("a", (4,)), ("b", (2,))])
    with pytest.raises(RuntimeError, match="wrote b where the header has a"):
        out.write("b", iter([torch.zeros(2)]), SaveStats())
    out = _StreamingFile(tmp_path / "y.safetensors", [("a", (4,))])
    with pytest.raises(RuntimeError, match="a has 12 bytes, its header 16"):
        out.write("a", iter([torch.zeros(3)]), SaveStats())


def test_save_stats_release_bytes_when_python_frees_the_tensor():
    stats = SaveStats()
    kept = stats.hold(torch.zeros(1000))
    dropped = stats.hold(torch.zeros(500))
    assert stats.held_bytes == 6000 and stats.peak_host_bytes == 6000
    del dropped
    gc.collect()
    assert stats.held_bytes == 4000
    stats.hold(torch.zeros(250))  # freed at once: nothing refers to it
    assert stats.held_bytes == 4000 and stats.peak_host_bytes == 6000
    assert kept.numel() == 1000


def test_gathers_reuse_one_buffer_while_the_collective_keeps_their_tensors(monkeypatch, tmp_path):
    """gloo's worker threads let go of a collective's tensors a little after it returns. Here the
    collective never lets go, and a rank still holds no more than twice its largest tensor."""
    kept = []

    def all_gather(outputs, mine, group=None):
        kept.append(outputs)
        for i, out in enumerate(outputs):
            if out.data_ptr() != mine.data_ptr():
                out.copy_(mine + 100 * i)  # the other rank's shard

    monkeypatch.setattr(torch.distributed, "all_gather", all_gather)
    monkeypatch.setattr(torch.distributed, "get_rank", lambda group=None: 0)
    monkeypatch.setattr(consolidated, "tensor_parallel_group", lambda: None)
    params = {name: torch.nn.Parameter(torch.randn(rows, 8)) for name, rows in [("a", 4), ("b", 8), ("c", 2)]}
    for p in params.values():
        p.tensor_model_parallel, p.partition_dim = True, 0
    stats = SaveStats()
    workspace = consolidated._workspace(list(params.values()), 2, stats)
    out = _StreamingFile(tmp_path / "x.safetensors", [(n, (2 * p.shape[0], 8)) for n, p in params.items()])
    for name, p in params.items():
        out.write(
            name,
            _row_blocks(consolidated._gathered(p.detach().clone(), p, 2, stats, workspace), 0, 2 * p.shape[0]),
            stats,
        )
    out.close()
    back = load_file(tmp_path / "x.safetensors")
    assert all(torch.equal(back[n], torch.cat([p.detach(), p.detach() + 100])) for n, p in params.items())
    assert len(kept) == 3
    assert stats.peak_host_bytes <= 2 * 4 * 16 * 8  # twice the largest gathered tensor ("b": 16 x 8 fp32)
