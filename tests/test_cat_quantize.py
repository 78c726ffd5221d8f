"""The fused QKV gradient's cat folded into its dual quantization (lowering/cat_quantize.py,
Config.fold_gradient_cat): what the backward graph runs, and that training computes the same."""

from __future__ import annotations

import re

import torch
import torch.nn as nn
import torch.nn.functional as F

import fp8pass
from conftest import fp8_grads_and_code, load_example

train_gpt = load_example("train_gpt")
CFG = train_gpt.GPTConfig(dim=256, n_heads=2, mlp_hidden=768, seq_len=128)


class GroupedQueryAttention(nn.Module):
    """Fused QKV projection with narrower K and V (grouped-query attention, 4 query heads, 2 KV heads)."""

    def __init__(self, dim=512, heads=4, kv_heads=2):
        super().__init__()
        self.heads, self.kv_heads, self.head_dim = heads, kv_heads, dim // heads
        self.wqkv = nn.Linear(dim, dim + 2 * kv_heads * self.head_dim, bias=False)
        self.wo = nn.Linear(dim, dim, bias=False)

    def forward(self, x):
        b, t, d = x.shape
        kv = self.kv_heads * self.head_dim
        q, k, v = self.wqkv(x).split([d, kv, kv], dim=-1)
        q = q.view(b, t, self.heads, self.head_dim).transpose(1, 2)
        k, v = (z.view(b, t, self.kv_heads, self.head_dim).transpose(1, 2) for z in (k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
        return self.wo(y.transpose(1, 2).reshape(b, t, d))


def _rotate(x, cos, sin):  # rotary position embedding of x [B, H, T, D]
    x1, x2 = x.chunk(2, -1)
    return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], -1)


class RotaryAttention(nn.Module):
    """Fused QKV projection with rotary embeddings on Q and K (Llama-style, one Linear)."""

    def __init__(self, dim=256, heads=2, seq=64):
        super().__init__()
        self.heads, self.head_dim = heads, dim // heads
        self.wqkv = nn.Linear(dim, 3 * dim, bias=False)
        self.wo = nn.Linear(dim, dim, bias=False)
        angles = torch.arange(seq)[:, None] * torch.exp(-torch.arange(self.head_dim // 2) / 8.0)[None]
        self.register_buffer("cos", angles.cos())
        self.register_buffer("sin", angles.sin())

    def forward(self, x):
        b, t, d = x.shape
        q, k, v = (z.view(b, t, self.heads, self.head_dim).transpose(1, 2) for z in self.wqkv(x).split(d, -1))
        q, k = _rotate(q, self.cos[:t], self.sin[:t]), _rotate(k, self.cos[:t], self.sin[:t])
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.wo(y.transpose(1, 2).reshape(b, t, d))


class UnbindAttention(nn.Module):
    """timm's ViT attention: one projection reshaped to [B, N, 3, H, D], permuted, unbound."""

    def __init__(self, dim=256, heads=2):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=False)
        self.proj = nn.Linear(dim, dim, bias=False)

    def forward(self, x):
        b, n, c = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4).unbind(0)
        y = F.scaled_dot_product_attention(q, k, v)
        return self.proj(y.transpose(1, 2).reshape(b, n, c))


def test_qkv_gradient_is_quantized_from_the_three_sdpa_gradients():
    """The backward calls the cat3 op on views of SDPA's three gradient buffers (no cat kernel and
    no copy of them), and every gradient is the one the unfolded graph computes, bit for bit."""
    torch.manual_seed(0)
    block, x = train_gpt.Block(CFG), torch.randn(2, 128, 256, requires_grad=True)
    folded, codes = fp8_grads_and_code(block, x)
    unfolded, codes_off = fp8_grads_and_code(block, x, fold_gradient_cat=False)
    backward, backward_off = codes[1], codes_off[1]
    call = re.search(r"torch\.ops\.fp8pass\.quantize_1x128_128x1_cat3_out\.default\((.*)\)\n", backward)
    assert call, "the fused QKV gradient's quantization is not the cat3 op"
    parts = re.findall(r"reinterpret_tensor\((buf\d+),", call.group(1))
    assert len(parts) == 3 and len(set(parts)) == 3, call.group(1)
    sdpa = re.search(r"\n +(buf\d+) = torch\.ops\.aten\._scaled_dot_product_\w+_backward\.default\(", backward)
    assert sdpa, "no SDPA backward call in the backward code"
    for buf in parts:  # each part is one of SDPA's backward outputs, read in place
        assert re.search(rf"\n +{buf} = {sdpa.group(1)}\[\d\]", backward), buf
    assert "fused_cat" not in backward  # Inductor's kernel names list the ops they fuse
    assert "fused_cat" in backward_off and "cat3" not in backward_off, "the negative control: without the option"
    for f, u in zip(folded, unfolded):
        assert torch.equal(f, u)


def test_folds_with_the_functional_ops():
    """inductor_buffers=False: the functional cat3 op (allocating its outputs) in the backward, same gradients."""
    torch.manual_seed(0)
    block, x = train_gpt.Block(CFG), torch.randn(2, 128, 256, requires_grad=True)
    folded, codes = fp8_grads_and_code(block, x, inductor_buffers=False)
    unfolded, _ = fp8_grads_and_code(block, x, inductor_buffers=False, fold_gradient_cat=False)
    assert "fp8pass.quantize_1x128_128x1_cat3.default(" in codes[1]
    for f, u in zip(folded, unfolded):
        assert torch.equal(f, u)


def test_explain_counts_the_folded_cats():
    torch.manual_seed(0)
    model = train_gpt.GPT(train_gpt.GPTConfig(dim=128, n_layers=2, n_heads=2, mlp_hidden=384, seq_len=64))
    tokens = torch.randint(0, 256, (2, 64))
    report = fp8pass.explain(model, tokens, tokens)
    assert report.folded_gradient_cats == 2
    assert "no cat (fold_gradient_cat): 2 in backward" in str(report)
    torch._dynamo.reset()
    off = fp8pass.explain(model, tokens, tokens, fp8_config=fp8pass.Config(fold_gradient_cat=False))
    assert off.folded_gradient_cats == 0 and "fold_gradient_cat" not in str(off)


def test_grouped_query_widths_fold():
    """K and V narrower than Q: the parts' widths 512, 256, 256 (tile boundaries 4 and 6)."""
    torch.manual_seed(0)
    attn, x = GroupedQueryAttention(), torch.randn(2, 64, 512, requires_grad=True)
    folded, codes = fp8_grads_and_code(attn, x)
    unfolded, _ = fp8_grads_and_code(attn, x, fold_gradient_cat=False)
    assert "quantize_1x128_128x1_cat3_out" in codes[1]
    for f, u in zip(folded, unfolded):
        assert torch.equal(f, u)


def test_rotary_embeddings_fold():
    """With RoPE, Q's and K's gradients come out of Inductor's rotary-backward kernel, V's straight
    from SDPA: the cat3 op reads those three buffers (the rotary kernel no longer writes a cat)."""
    torch.manual_seed(0)
    attn, x = RotaryAttention(), torch.randn(2, 64, 256, requires_grad=True)
    folded, codes = fp8_grads_and_code(attn, x)
    unfolded, codes_off = fp8_grads_and_code(attn, x, fold_gradient_cat=False)
    assert "quantize_1x128_128x1_cat3_out" in codes[1] and "fused_cat" not in codes[1]
    assert "cat3" not in codes_off[1]
    for f, u in zip(folded, unfolded):
        assert torch.equal(f, u)


def test_unbound_qkv_folds():
    """timm-style attention: the backward stacks SDPA's gradients (a dim-0 cat), permutes them to
    [B, N, 3, H, D] and copies them contiguous; the cat3 op reads the gradients instead (no cat, no
    copy kernel), bit for bit."""
    torch.manual_seed(0)
    attn, x = UnbindAttention(), torch.randn(2, 64, 256, requires_grad=True)
    folded, codes = fp8_grads_and_code(attn, x)
    unfolded, codes_off = fp8_grads_and_code(attn, x, fold_gradient_cat=False)
    assert "quantize_1x128_128x1_cat3_out" in codes[1] and "cat3" not in codes_off[1]
    # Inductor names the kernel that copied the stacked gradients by the ops it fuses (here
    # clone_permute_stack); with the fold it is gone
    assert not re.search(r"fused_\w*stack", codes[1]) and re.search(r"fused_\w*stack", codes_off[1])
    for f, u in zip(folded, unfolded):
        assert torch.equal(f, u)


def test_folds_under_dynamic_sequence_lengths():
    from torch._dynamo.utils import counters
    from torch._inductor.utils import run_and_get_code

    torch.manual_seed(0)
    model = train_gpt.GPT(train_gpt.GPTConfig(dim=128, n_layers=1, n_heads=2, mlp_hidden=384, seq_len=256))
    counters.clear()
    torch._dynamo.reset()
    compiled = torch.compile(model, backend="fp8", dynamic=True)
    for t in (140, 200):
        tokens = torch.randint(0, 256, (2, t), generator=torch.Generator().manual_seed(t))
        if t == 140:
            _, codes = run_and_get_code(lambda: compiled(tokens, tokens).backward())
            assert "quantize_1x128_128x1_cat3_out" in codes[1]
        else:
            compiled(tokens, tokens).backward()
    assert counters["stats"]["unique_graphs"] == 1


def test_folds_only_the_row_major_view_of_the_cat():
    """The dual quantization of cat(parts).reshape(B*T, K) folds (and computes what it computes
    eagerly); of the same cat viewed as [B, T*K] (another matrix) it must not."""
    from torch._inductor.utils import run_and_get_code

    ops = torch.ops.fp8pass
    parts = [torch.randn(2, 2, 64, 128).bfloat16() for _ in range(3)]  # [B, H, T, D]

    def as_rows(a, b, c):
        x = torch.cat([p.transpose(1, 2).reshape(2, 64, 256) for p in (a, b, c)], dim=-1)
        return ops.quantize_1x128_128x1(x.reshape(128, 768))

    def as_batches(a, b, c):
        x = torch.cat([p.transpose(1, 2).reshape(2, 64, 256) for p in (a, b, c)], dim=-1)
        return ops.quantize_1x128_128x1(x.reshape(2, 64 * 768))

    for fn, folds in ((as_rows, True), (as_batches, False)):
        torch._dynamo.reset()
        got, (code,) = run_and_get_code(torch.compile(fn, backend="fp8"), *parts)
        assert ("quantize_1x128_128x1_cat3" in code) == folds, fn.__name__
        for g, w in zip(got, fn(*parts)):
            assert torch.equal(g.view(torch.uint8) if g.dtype == torch.float8_e4m3fn else g,
                               w.view(torch.uint8) if w.dtype == torch.float8_e4m3fn else w), fn.__name__
