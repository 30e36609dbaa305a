import torch

from bigtrain.config import ModelConfig
from bigtrain.model.gpt import GPT
from bigtrain.model.layers import Vocab
from bigtrain.train.sample import evaluating, filter_logits, generate, last_logits


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


def test_right_padding_for_sequence_parallel_keeps_the_sample():
    """Sequence parallel pads the context on the right to a multiple of the TP size; causal
    attention must leave the next-token logits, and so every drawn token, unchanged."""

    cfg = ModelConfig(n_layers=2, n_heads=4, d_model=64, seq_len=32, position="rope")
    model = GPT(cfg, vocab=Vocab.of(100, cfg.pad_vocab_multiple), seed=0)
    ids = torch.randint(0, 100, (1, 7))
    with evaluating(model):
        plain = last_logits(model)(ids)
        for multiple in (2, 4, 8):
            torch.testing.assert_close(last_logits(model, multiple)(ids), plain, rtol=0, atol=1e-5)
        samples = [
            generate(last_logits(model, m), [1, 2, 3], 40, cfg.seq_len, temperature=1.0, top_k=20, seed=3)
            for m in (1, 4)
        ]
    assert model.training  # evaluating() restored the mode
    assert samples[0] == samples[1] and len(samples[0]) == 40 and len(set(samples[0])) > 5
