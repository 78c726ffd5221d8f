"""The example GPT trains under backend="fp8" like it does under the stock backend."""

import math

import torch

from conftest import load_example

train_gpt = load_example("train_gpt")
STEPS = 200


def test_gpt_fp8_training_matches_stock_backend():
    corpus = train_gpt.load_corpus(2 << 20)
    cfg = train_gpt.GPTConfig()  # the example's CPU default: dim 128, 2 layers, SwiGLU 384
    kwargs = dict(cfg=cfg, steps=STEPS, batch=8, lr=1e-3, seed=0, corpus=corpus)
    fp8_losses, fp8_heldout = train_gpt.train(backend="fp8", **kwargs)
    torch._dynamo.reset()
    ref_losses, ref_heldout = train_gpt.train(backend="inductor", **kwargs)

    assert all(math.isfinite(v) for v in fp8_losses), "loss must stay finite throughout"
    first, last = sum(fp8_losses[:10]) / 10, sum(fp8_losses[-20:]) / 20
    assert last < 0.6 * first, f"loss must fall: {first:.3f} -> {last:.3f}"
    rel = abs(fp8_heldout - ref_heldout) / ref_heldout
    print(f"held-out loss after {STEPS} steps: fp8 {fp8_heldout:.4f}, stock {ref_heldout:.4f}, rel {rel:.3%}")
    assert rel < 0.01, f"fp8 {fp8_heldout:.4f} vs stock {ref_heldout:.4f}: {rel:.2%} apart"
    # the two runs really differ (FP8 ran), yet track each other step by step
    assert fp8_losses != ref_losses
