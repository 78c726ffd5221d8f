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


def test_compare_reports_tail_mean_and_non_finite_steps(tmp_path, capsys):
    """The convergence comparison of the GPU preset (--compare): the relative difference of the
    mean loss over the last 200 steps, NaN steps counted, both curves in loss.csv."""
    fp8 = [5.0] * 300 + [2.02] * 200
    base = [5.0] * 300 + [2.00] * 200
    fp8[10] = float("nan")
    train_gpt.write_losses(tmp_path / "loss_fp8.csv", fp8, 2.1)
    train_gpt.write_losses(tmp_path / "loss_baseline.csv", base, 2.0)
    result = train_gpt.compare(tmp_path)
    assert math.isclose(result["relative"], 0.01, rel_tol=1e-9)
    assert result["non_finite"] == {"fp8": 1, "baseline": 0}
    rows = (tmp_path / "loss.csv").read_text().splitlines()
    assert rows[0] == "step,fp8,baseline" and len(rows) == 501 and rows[-1] == "499,2.02,2.0"
    assert "+1.000%" in capsys.readouterr().out
