import torch

from bigtrain.train.sample import filter_logits


def test_top_k_keeps_k_largest():
    logits = torch.tensor([[1.0, 5.0, 3.0, 4.0, 2.0]])
    out = filter_logits(logits, top_k=2)
    assert torch.isfinite(out).tolist() == [[False, True, False, True, False]]


def test_top_p_keeps_smallest_nucleus():
    probs = torch.tensor([[0.5, 0.3, 0.15, 0.05]])
    out = filter_logits(probs.log(), top_p=0.7)  # 0.5 < 0.7, 0.5 + 0.3 crosses it: keep two
    assert torch.isfinite(out).tolist() == [[True, True, False, False]]
    out = filter_logits(probs.log(), top_p=0.5)  # the first token alone reaches 0.5
    assert torch.isfinite(out).tolist() == [[True, False, False, False]]
