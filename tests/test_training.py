"""The example GPT trains under backend="fp8" like it does under the stock backend."""

import math

import torch

from conftest import load_example

train_gpt = load_example("train_gpt")
STEPS = 100


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


def test_gpu_preset_schedule_warmup_cosine_and_clipping(monkeypatch, tmp_path):
    """The gpu-350m preset's schedule: linear warmup, cosine to 10% at the last step; and a
    clipped run on the CPU trains (finite, falling loss) with the clip applied, its curve on disk
    before the held-out evaluation starts (a run cut short there keeps it)."""
    f = train_gpt.lr_factor
    assert f(0, 2000, 200, "cosine") == 1 / 200 and f(199, 2000, 200, "cosine") == 1.0
    assert math.isclose(f(200, 2000, 200, "cosine"), 1.0) and math.isclose(f(1999, 2000, 200, "cosine"), 0.1)
    assert 0.1 < f(1100, 2000, 200, "cosine") < 1.0 and f(1100, 2000, 200, "constant") == 1.0
    preset = train_gpt.PRESETS["gpu-350m"]
    assert preset["schedule"] == "cosine" and preset["clip"] > 0 and preset["warmup"] == 200

    clipped_norms = []
    real_clip = torch.nn.utils.clip_grad_norm_

    def recording_clip(params, max_norm, *args, **kwargs):
        norm = real_clip(params, max_norm, *args, **kwargs)
        clipped_norms.append((float(norm), max_norm))
        return norm

    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", recording_clip)
    csv_path = tmp_path / "loss_fp8.csv"
    on_disk_at_eval = []
    real_evaluate = train_gpt.evaluate

    def checking_evaluate(*args, **kwargs):
        on_disk_at_eval.append(train_gpt.read_losses(csv_path) if csv_path.exists() else None)
        return real_evaluate(*args, **kwargs)

    monkeypatch.setattr(train_gpt, "evaluate", checking_evaluate)
    losses, _ = train_gpt.train(train_gpt.GPTConfig(), "fp8", steps=30, batch=4, lr=1e-3,
                                corpus=train_gpt.load_corpus(1 << 20), warmup=5, schedule="cosine", clip=0.5,
                                losses_csv=csv_path)
    assert on_disk_at_eval == [losses]
    assert len(clipped_norms) == 30 and all(m == 0.5 for _, m in clipped_norms)
    assert all(math.isfinite(v) for v in losses) and sum(losses[-5:]) < sum(losses[:5])


def test_compare_reads_further_runs_as_the_run_to_run_spread(tmp_path, capsys):
    """Further runs (--tag / --seed N: loss_<side>_<tag>.csv) are compared side against side and
    give each side's spread, against which the pair's difference is read."""
    train_gpt.write_losses(tmp_path / "loss_fp8.csv", [5.0] * 300 + [2.02] * 200, 2.1)
    train_gpt.write_losses(tmp_path / "loss_baseline.csv", [5.0] * 300 + [2.00] * 200, 2.0)
    train_gpt.write_losses(tmp_path / "loss_baseline_repeat.csv", [5.0] * 300 + [2.04] * 200, 2.0)
    train_gpt.write_losses(tmp_path / "loss_fp8_seed1.csv", [5.0] * 300 + [2.06] * 200, 2.1)
    result = train_gpt.compare(tmp_path)
    assert math.isclose(result["relative"], 0.01, rel_tol=1e-9)  # the pair, as before
    assert math.isclose(result["relative_of_means"], (2.04 - 2.02) / 2.02, rel_tol=1e-9)
    assert math.isclose(result["spread"]["baseline"], 0.04 / 2.02, rel_tol=1e-9)
    assert math.isclose(result["spread"]["fp8"], 0.04 / 2.04, rel_tol=1e-9)
    header = (tmp_path / "loss.csv").read_text().splitlines()[0]
    assert header == "step,fp8,fp8_seed1,baseline,baseline_repeat"
    out = capsys.readouterr().out
    assert "further run baseline_repeat: mean 2.0400" in out and "further run fp8_seed1: mean 2.0600" in out
    assert "further run baseline:" not in out, "the pair's own baseline is not a further run"
