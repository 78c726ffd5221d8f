"""Per-GEMM numerics on real inputs: what FP8 costs at each converted site.

`Report.numerics()` recompiles the model in observation mode: each GEMM the pass would convert
is replaced by `torch.ops.fp8pass.observe_mm`, which computes the high-precision product and
keeps its operands (in the canonical form A[M, K] @ B[K, N]), or for an MoE experts' grouped GEMM
by `observe_grouped_mm` (A, B and the groups' ends, as torch._grouped_mm takes them). Each kept
pair is then run both ways: in float64, and quantized exactly as the pass quantizes that role (A in
1x128 tiles; B in 128x128 blocks for Fprop/Dgrad, per expert for a stack; 128x1 tiles for Wgrad)
through the FP8 GEMM op.
"""

from __future__ import annotations

import dataclasses
import threading

import torch

from fp8pass.kernels.reference import TILE, _pad_dim

MIN_NORMAL_E4M3 = 2.0 ** -6
_OBSERVED: dict[str, tuple] = {}  # key -> (A, B) or, for a grouped GEMM, (A, B, offs)
_LOCK = threading.Lock()


@torch.library.custom_op("fp8pass::observe_mm", mutates_args=())
def observe_mm(a: torch.Tensor, b: torch.Tensor, key: str) -> torch.Tensor:
    """a @ b, keeping (a, b) under `key` for Report.numerics()."""
    with _LOCK:
        _OBSERVED[key] = (a.detach().clone(), b.detach().clone())
    return a @ b


@observe_mm.register_fake
def _(a, b, key):
    return a.new_empty((a.shape[0], b.shape[1]))


@torch.library.custom_op("fp8pass::observe_grouped_mm", mutates_args=())
def observe_grouped_mm(a: torch.Tensor, b: torch.Tensor, offs: torch.Tensor, key: str) -> torch.Tensor:
    """torch._grouped_mm(a, b, offs=offs), keeping (a, b, offs) under `key` for Report.numerics()."""
    with _LOCK:
        _OBSERVED[key] = (a.detach().clone(), b.detach().clone(), offs.detach().clone())
    return torch._grouped_mm(a, b, offs=offs)


@observe_grouped_mm.register_fake
def _(a, b, offs, key):
    if b.dim() == 3:
        return a.new_empty((a.shape[0], b.shape[2]))
    return a.new_empty((offs.shape[0], a.shape[0], b.shape[1]))


def take_observed() -> dict[str, tuple]:
    with _LOCK:
        out = dict(_OBSERVED)
        _OBSERVED.clear()
    return out


def sqnr_db(ref: torch.Tensor, x: torch.Tensor) -> float:
    ref, x = ref.double(), x.double()
    noise = (ref - x).pow(2).sum()
    if noise == 0:
        return float("inf")
    return float(10 * torch.log10(ref.pow(2).sum() / noise))


def calc_diff(x: torch.Tensor, y: torch.Tensor) -> float:
    """DeepGEMM's gate: 1 - 2 sum(xy) / sum(x^2 + y^2); 0 for identical tensors."""
    x, y = x.double(), y.double()
    denom = (x * x + y * y).sum()
    return float(1 - 2 * (x * y).sum() / denom) if denom > 0 else 0.0


@dataclasses.dataclass(frozen=True)
class QuantStats:
    """How one operand fares in E4M3 with its tiling.

    underflow: nonzero values that became 0; subnormal: values that landed below E4M3's normal
    range (fewer mantissa bits); nonfinite: NaN/Inf inputs; outlier_tiles: tiles whose largest
    magnitude is over `outlier_ratio` times the median nonzero magnitude of the tile (one value
    sets the scale for all 128 or 16384 of them)."""

    tiling: str
    amax: float
    numel: int
    underflow: int
    subnormal: int
    nonfinite: int
    outlier_tiles: int
    tiles: int


def _pad_nan(x: torch.Tensor, dim: int) -> torch.Tensor:
    """x padded along `dim` to a multiple of 128 with NaN: a partial tile's padding is no value."""
    return _pad_dim(x, dim, TILE, float("nan"))


def _tiles(x: torch.Tensor, tiling: str) -> torch.Tensor:
    """[number of tiles, elements per tile] view of a 2-D tensor of magnitudes (NaN for no value;
    tails padded with NaN, so a partial tile's median is that of its own values)."""
    if tiling == "1x128":
        x = _pad_nan(x, -1)
        return x.reshape(-1, TILE)
    if tiling == "128x1":
        x = _pad_nan(x, 0)
        return x.reshape(x.shape[0] // TILE, TILE, x.shape[1]).permute(0, 2, 1).reshape(-1, TILE)
    x = _pad_nan(_pad_nan(x, 0), 1)
    blocks = x.reshape(x.shape[0] // TILE, TILE, x.shape[1] // TILE, TILE).permute(0, 2, 1, 3)
    return blocks.reshape(-1, TILE * TILE)


def quant_stats(x: torch.Tensor, q: torch.Tensor, tiling: str, outlier_ratio: float = 1e3) -> QuantStats:
    x = x.float()
    qa = q.float().abs()
    finite = torch.isfinite(x)
    nonzero = (x != 0) & finite
    zeroed = nonzero & (qa == 0)
    low = nonzero & (qa < MIN_NORMAL_E4M3) & ~zeroed
    mags = _tiles(torch.where(nonzero, x.abs(), torch.full_like(x, float("nan"))), tiling)
    counts = (~torch.isnan(mags)).sum(1)
    median = torch.nanmedian(mags, dim=1).values
    tile_amax = torch.nan_to_num(mags, nan=0.0).amax(1)
    outliers = (counts >= 8) & (tile_amax > outlier_ratio * median)
    return QuantStats(tiling, float(x[finite].abs().max()) if finite.any() else float("nan"), x.numel(),
                      int(zeroed.sum()), int(low.sum()), int((~finite).sum()), int(outliers.sum()), mags.shape[0])


@dataclasses.dataclass(frozen=True)
class SiteNumerics:
    module: str
    role: str
    shape: tuple
    sqnr_db: float
    calc_diff: float
    a: QuantStats
    b: QuantStats
    flagged: bool
    why: str


def _grouped_float64(a: torch.Tensor, b: torch.Tensor, offs: torch.Tensor) -> torch.Tensor:
    """torch._grouped_mm's product in float64, group by group (rows past the last group zero)."""
    from fp8pass.kernels.reference import group_bounds

    a, b = a.double(), b.double()
    if b.dim() == 3:
        out = a.new_zeros((a.shape[0], b.shape[2]))
        for g, (s, e) in enumerate(group_bounds(offs, a.shape[0])):
            out[s:e] = a[s:e] @ b[g]
        return out
    return torch.stack([a[:, s:e] @ b[s:e] for s, e in group_bounds(offs, a.shape[1])])


def site_numerics(module: str, role: str, a: torch.Tensor, b: torch.Tensor, threshold_db: float,
                  outlier_ratio: float = 1e3, offs: torch.Tensor | None = None) -> SiteNumerics:
    """One GEMM's numerics; `offs` given: a grouped GEMM (MoE experts), b then a [G, K, N] stack
    (Fprop, Dgrad) or the [S, N] operand of a Wgrad grouped along S."""
    ops = torch.ops.fp8pass
    aq, a_scale = ops.quantize_1x128(a)
    if role == "wgrad":
        bq_t, b_scale_t = ops.quantize_128x1(b)  # stored transposed
        bq, b_scale = bq_t.t(), b_scale_t.t()
        b_tiling = "128x1"
    else:
        bq, b_scale = ops.quantize_128x128(b)  # a stack: block by block per expert
        b_tiling = "128x128"
    if offs is None:
        out = ops.gemm_blockwise(aq, a_scale, bq, b_scale, torch.float32)
        ref = a.double() @ b.double()
    else:
        out = ops.gemm_blockwise_grouped(aq, a_scale, bq, b_scale, offs, torch.float32)
        ref = _grouped_float64(a, b, offs)
    sq, cd = sqnr_db(ref, out), calc_diff(ref, out)
    a_stats = quant_stats(a, aq, "1x128", outlier_ratio)
    # an experts' stack [G, K, N] as one [G*K, N] matrix: the same 128x128 blocks (K % 128 == 0)
    b_stats = quant_stats(b.flatten(0, -2), bq.flatten(0, -2), b_tiling, outlier_ratio)
    why = []
    if not sq >= threshold_db:  # NaN compares false: flagged too
        why.append(f"SQNR {sq:.1f} dB < {threshold_db:g} dB")
    for name, st in (("A", a_stats), ("B", b_stats)):
        if st.outlier_tiles:
            why.append(f"{name} has {st.outlier_tiles} outlier tile(s) of {st.tiles} ({st.tiling} tiles): a value "
                       f"over {outlier_ratio:g}x the tile's median sets the scale of all of it")
        if st.nonfinite:
            why.append(f"{name} has {st.nonfinite} NaN/Inf value(s)")
    return SiteNumerics(module, role, (a.shape[0], a.shape[1], b.shape[-1]), sq, cd, a_stats, b_stats,
                        bool(why), "; ".join(why))


@dataclasses.dataclass
class NumericsReport:
    sites: list[SiteNumerics]
    threshold_db: float

    @property
    def flagged(self) -> list[SiteNumerics]:
        return [s for s in self.sites if s.flagged]

    def __str__(self) -> str:
        rows = [("module", "role", "M x K x N", "SQNR dB", "calc_diff", "A under/sub", "B under/sub", "flag")]
        for s in self.sites:
            rows.append((s.module or "<root>", s.role, " x ".join(map(str, s.shape)), f"{s.sqnr_db:.1f}",
                         f"{s.calc_diff:.2e}", f"{s.a.underflow}/{s.a.subnormal}", f"{s.b.underflow}/{s.b.subnormal}",
                         "FLAG" if s.flagged else ""))
        widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
        lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
        lines.insert(1, "-" * len(lines[0]))
        lines.append(f"{len(self.flagged)} of {len(self.sites)} GEMMs flagged (threshold {self.threshold_db:g} dB)")
        lines += [f"  {s.module} {s.role}: {s.why}" for s in self.flagged]
        return "\n".join(lines)

    def to_dict(self) -> dict:
        return {"threshold_db": self.threshold_db, "sites": [dataclasses.asdict(s) for s in self.sites]}

