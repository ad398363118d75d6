"""Calibration metrics from logits and labels, with bootstrap confidence intervals.

- `accuracy`: top-1.
- `ece`: expected calibration error over `num_bins` equal-width bins of the top-label confidence,
  Σ_b |B_b|/N · |acc(B_b) − conf(B_b)| (Naeini et al. 2015; Guo et al. 2017); bins are (lo, hi].
- `ace`: the same over `num_bins` equal-mass bins of the sorted top-label confidences (adaptive ECE,
  Nixon et al. 2019, top-label as in torch-uncertainty), which no bin of a few examples can dominate.
- `classwise_ece`: for every class k, the ECE of p_k against 1[y = k] over equal-width bins, averaged over
  the classes (Kull et al. 2019): calibration of every probability, not only the top one.
- `smece`: smooth ECE (Błasiok & Nakkiran, ICLR 2024), the top-label residuals smoothed with a reflected
  Gaussian kernel whose width σ solves smECE_σ = σ; a consistent measure where binned ECE is not. It follows
  `relplot.smECE` (same discretization; tested to 1e-4).
- `mce`: the largest gap over the equal-width bins holding at least `min_bin_count` examples (over every
  non-empty bin when none does): a bin of 2 examples has a gap of 0.5 by chance alone.
- `nll`; `brier` = mean over examples of Σ_k (p_k − 1[k = y])² (range [0, 2]); `confidence`, the mean top-1
  probability (above `accuracy`: over-confident on average).

Everything is computed in float64 from log-softmax, so very large logits give finite NLL. With
`bootstrap_resamples = R`, each metric also gets `<key>_ci = [low, high]`, the 2.5 and 97.5 percentiles over R
resamples of the examples (seeded): every metric is a function of per-example weights, so all R resamples are
computed at once (a resample is a row of multinomial counts). Inputs may be numpy arrays, torch tensors or lists.
"""

import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

DEFAULT_NUM_BINS = 15
MCE_MIN_COUNT = 10
BOOTSTRAP_CHUNK = 10_000_000
"""Resample counts held at once (80 MB of float64): 1,000 resamples of 10,000 examples in one chunk."""
KEYS = ("accuracy", "ece", "ace", "classwise_ece", "smece", "mce", "nll", "brier", "confidence")


def _as_numpy(logits: Any, labels: Any) -> tuple[np.ndarray, np.ndarray]:
    if hasattr(logits, "detach"):
        logits = logits.detach().float().cpu().numpy()
    if hasattr(labels, "detach"):
        labels = labels.detach().cpu().numpy()
    logits = np.asarray(logits, dtype=np.float64)
    labels = np.asarray(labels).astype(np.int64).reshape(-1)
    if logits.ndim != 2 or logits.shape[0] != labels.shape[0]:
        raise ValueError(f"Expected logits (N, num_labels) and labels (N,); got {logits.shape} and {labels.shape}.")
    if labels.size == 0:
        raise ValueError("Calibration metrics need at least one example.")
    if labels.min() < 0 or labels.max() >= logits.shape[1]:
        raise ValueError(f"Labels must lie in [0, {logits.shape[1]}); got values in [{labels.min()}, {labels.max()}].")
    return logits, labels


def log_softmax(logits: np.ndarray) -> np.ndarray:
    return torch.log_softmax(torch.from_numpy(logits), dim=1).numpy()  # float64, on every core


def _bin_ids(confidence: np.ndarray, num_bins: int) -> np.ndarray:
    """Equal-width bins (lo, hi]; a confidence of 0 goes to the first."""
    if num_bins < 1:
        raise ValueError(f"num_bins must be >= 1, got {num_bins}.")
    return np.clip(np.ceil(confidence * num_bins).astype(np.int64) - 1, 0, num_bins - 1)


def reliability_bins(logits: Any, labels: Any, num_bins: int = DEFAULT_NUM_BINS) -> dict[str, np.ndarray]:
    """Per-bin data of a reliability diagram over equal-width confidence bins (lo, hi].

    Returns the bin edges, the number of examples, their mean confidence and their accuracy per
    bin (confidence and accuracy are NaN for empty bins).
    """
    logits, labels = _as_numpy(logits, labels)
    probs = np.exp(log_softmax(logits))
    confidence, correct = probs.max(axis=1), (probs.argmax(axis=1) == labels).astype(np.float64)
    bins = _bin_ids(confidence, num_bins)
    counts = np.bincount(bins, minlength=num_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        return {
            "edges": np.linspace(0.0, 1.0, num_bins + 1),
            "counts": counts,
            "confidence": np.bincount(bins, weights=confidence, minlength=num_bins) / counts,
            "accuracy": np.bincount(bins, weights=correct, minlength=num_bins) / counts,
        }


# ---- every metric as a function of per-example weights W (R, N): one row per resample ----------------------------


def _binned(weights: np.ndarray, bins: np.ndarray, residual: np.ndarray, num_bins: int) -> tuple[np.ndarray, ...]:
    """Per row and bin: the weighted count and the weighted sum of residuals (confidence − correctness)."""
    one_hot = np.eye(num_bins)[bins]
    return weights @ one_hot, weights @ (one_hot * residual[:, None])


def _mce(counts: np.ndarray, sums: np.ndarray, min_count: int) -> np.ndarray:
    with np.errstate(invalid="ignore", divide="ignore"):
        gaps = np.where(counts > 0, np.abs(sums) / counts, -np.inf)
    counted = np.where(counts >= min_count, gaps, -np.inf).max(axis=1)
    return np.where(np.isfinite(counted), counted, gaps.max(axis=1))


def _ace(weights: np.ndarray, confidence: np.ndarray, residual: np.ndarray, num_bins: int) -> np.ndarray:
    """Equal-mass bins over each row's multiset of examples sorted by confidence (`np.array_split` sizes): an
    example of weight w fills w consecutive positions, and a bin boundary may fall between its copies."""
    dtype = torch.float64 if len(weights) == 1 else torch.float32  # the bootstrap's intervals need no more
    order = torch.from_numpy(np.argsort(confidence, kind="stable"))
    w = torch.from_numpy(weights).to(dtype)[:, order]
    r = torch.from_numpy(residual).to(dtype)[order]
    total = int(round(weights[0].sum()))
    sizes = [total // num_bins + (j < total % num_bins) for j in range(num_bins)]
    bounds = torch.tensor(np.concatenate([[0], np.cumsum(sizes)]), dtype=dtype).expand(len(w), -1).contiguous()
    filled, mass = torch.cumsum(w, dim=1), torch.cumsum(w * r, dim=1)
    k = torch.searchsorted(filled, bounds, side="right").clamp(max=len(r) - 1)  # the example at each boundary
    before = (k - 1).clamp(min=0)
    before_filled = torch.where(k > 0, filled.gather(1, before), 0.0)
    before_mass = torch.where(k > 0, mass.gather(1, before), 0.0)
    at = before_mass + (bounds - before_filled) * r[k]  # residual mass of the first `bound` positions
    at[:, 0], at[:, -1] = 0.0, mass[:, -1]
    return (at.diff(dim=1).abs().sum(dim=1) / total).double().numpy()


def _classwise_parts(probs: np.ndarray, labels: np.ndarray, num_bins: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The per-example half of `_classwise_ece`, computed once for the point estimate and every resample: the
    probabilities above 1/num_bins (fewer than num_bins per example) as a sparse (class-bin pair, example) matrix of
    residuals p_ik − 1[y_i = k], and the class of each pair."""
    rows, cols = np.nonzero(probs * num_bins > 1)  # the entries above the first bin
    pairs, column = np.unique(cols * num_bins + _bin_ids(probs[rows, cols], num_bins), return_inverse=True)
    residual = probs[rows, cols] - (labels[rows] == cols)
    sparse = torch.sparse_coo_tensor(np.stack([column, rows]), residual, (len(pairs), len(labels)),
                                     check_invariants=False).coalesce()  # fmt: skip
    return sparse, torch.from_numpy(pairs // num_bins)


def _classwise_ece(weights: np.ndarray, probs: np.ndarray, labels: np.ndarray,
                   parts: tuple[torch.Tensor, torch.Tensor]) -> np.ndarray:  # fmt: skip
    """Σ over classes and bins of |Σ_i w_i (p_ik − 1[y_i = k])| / (N · K). A probability above 1/num_bins is rare:
    those go through a sparse product over the (class, bin) pairs they fill (`_classwise_parts`), and each class's
    first bin is its total minus them, so that 20k classes cost one dense product."""
    (n, k), r = probs.shape, len(weights)
    dtype = torch.float64 if r == 1 else torch.float32  # the bootstrap's intervals need no more
    w = torch.from_numpy(weights).to(dtype)
    label_index = torch.from_numpy(labels).expand(r, -1)
    totals = w @ torch.from_numpy(probs).to(dtype) - torch.zeros(r, k, dtype=dtype).scatter_add_(1, label_index, w)
    sparse, pair_class = parts
    with warnings.catch_warnings():  # torch warns that sparse CSR is "beta"; this product is tested against dense
        warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta state")
        upper = (sparse.to(dtype).to_sparse_csr() @ w.t().contiguous()).t()  # (R, filled pairs)
    first = totals.index_add(1, pair_class, upper, alpha=-1)
    return ((first.abs().sum(dim=1) + upper.abs().sum(dim=1)) / (n * k)).double().numpy()


def _spectrum(weighted: torch.Tensor, f: np.ndarray, grid: int) -> torch.Tensor:
    """relplot's smooth_round_to_grid of every weighted value (V, N, R: value v of example i times its weight in
    resample r) — each example's weighted value split linearly between its two nearest grid points — reflected at 0
    and 1 (its ReflectedGaussianKernel) and Fourier-transformed, ready for any kernel width. Returns
    (V, R, size // 2 + 1)."""
    cell = (f * (grid - 1)).astype(int).clip(0, grid - 2)
    frac = f * (grid - 1) - cell
    n = len(f)
    index = np.stack([np.concatenate([cell, cell + 1]), np.tile(np.arange(n), 2)])
    split = torch.sparse_coo_tensor(index, np.concatenate([1 - frac, frac]), (grid, n), check_invariants=False)
    split = split.to(weighted.dtype).coalesce().to_sparse_csr()
    gridded = torch.stack([(split @ column).t() for column in weighted])
    flipped = gridded.flip(-1)
    extended = torch.cat([flipped[..., :-1], gridded, flipped[..., 1:]], dim=-1)
    return torch.fft.rfft(extended, _fft_size(grid))


def _fft_size(grid: int) -> int:
    """The smallest 2^a 3^b 5^c (fast for pocketfft) that holds the full linear convolution of 3 grid - 2 and grid
    points: up to 2x smaller than the next power of 2."""
    need, best = 4 * grid - 3, 1 << (4 * grid - 3 - 1).bit_length()
    power5 = 1
    while power5 < best:
        power35 = power5
        while power35 < best:
            size = power35 << max(0, (need - 1) // power35).bit_length()  # the smallest power-of-2 multiple >= need
            best = min(best, size)
            power35 *= 3
        power5 *= 5
    return best


def _smooth(spectrum: torch.Tensor, grid: int, sigma: float, t: np.ndarray) -> torch.Tensor:
    """relplot's ReflectedGaussianKernel.apply from `_spectrum`: convolved with a Gaussian of width sigma (by FFT,
    every row at once), cut as np.convolve 'valid' and relplot do, interpolated at t."""
    x = torch.linspace(0, 1, grid, dtype=torch.float64)
    kernel = torch.exp(-((x - 0.5) ** 2) / (2 * sigma**2)) / (np.sqrt(2 * np.pi) * sigma)
    size = _fft_size(grid)
    full = torch.fft.irfft(spectrum * torch.fft.rfft(kernel.to(spectrum.real.dtype), size), size)
    smoothed = full[..., grid - 1 + grid // 2 : grid - 1 + grid // 2 + grid]
    at = torch.from_numpy((t * (grid - 1)).astype(int).clip(0, grid - 2))
    residue = torch.from_numpy((t - at.numpy() / (grid - 1)) * (grid - 1)).to(smoothed.dtype)
    return smoothed[..., at] * (1 - residue) + smoothed[..., at + 1] * residue


def _smece(weights: np.ndarray, f: np.ndarray, y: np.ndarray, eps: float = 0.001, refine: int = 10) -> np.ndarray:
    """relplot.smECE for every row of weights: the bisection for the σ where smECE_σ = σ (its `search_param`), then
    smECE at that σ. Rows are grouped by their σ; the gridded values depend on σ only through the grid size."""
    dtype = torch.float64 if len(weights) == 1 else torch.float32  # the bootstrap's intervals need no more
    w = torch.from_numpy(weights).to(dtype)
    weighted = torch.stack([(w * torch.from_numpy(v).to(dtype)).t().contiguous() for v in (f - y, np.ones_like(f))])
    spectra: dict[int, tuple[torch.Tensor, np.ndarray]] = {}

    def at(sigma: np.ndarray) -> np.ndarray:  # relplot.metrics.smooth_ece(f, y, sigma) for every row
        out = np.empty(len(weights))
        for value in np.unique(sigma):
            rows = sigma == value
            grid = max(2000, round(20 / value)) // 2 + 1
            # A grid's spectra are computed for the rows that reach it, once (a fine grid: few rows reach it).
            spectrum, done = spectra.get(grid, (None, np.zeros(len(weights), dtype=bool)))
            if (need := rows & ~done).any():
                computed = _spectrum(weighted if need.all() else weighted[..., torch.from_numpy(need)], f, grid)
                if spectrum is None:
                    spectrum = computed.new_empty((len(weighted), len(weights), computed.shape[-1]))
                spectrum[:, torch.from_numpy(need)] = computed
                spectra[grid] = spectrum, done | need
            t = np.linspace(0, 1, max(round(10 / value), 200))
            spectrum = spectrum if rows.all() else spectrum[:, torch.from_numpy(rows)]
            residuals, density = _smooth(spectrum, grid, value, t).double()
            out[rows] = (residuals.abs().sum(dim=1) / (density + 1e-4).sum(dim=1)).numpy()
        return out

    def holds(sigma: np.ndarray) -> np.ndarray:
        return (sigma < eps) | (sigma < at(sigma))

    start, end = np.ones(len(weights)), np.zeros(len(weights))
    done = holds(start)
    for _ in range(refine):
        middle = (start + end) / 2
        ok = holds(middle)
        end, start = np.where(ok, middle, end), np.where(ok, start, middle)
    return at(np.where(done, 1.0, start))


def _examples(probs: np.ndarray, log_probs: np.ndarray, labels: np.ndarray, num_bins: int) -> dict[str, Any]:
    """What the metrics need of each example, computed once for the point estimates and every resample."""
    n = len(labels)
    confidence = probs.max(axis=1)
    correct = (probs.argmax(axis=1) == labels).astype(np.float64)
    return {
        "probs": probs, "labels": labels, "confidence": confidence, "correct": correct,
        "residual": confidence - correct, "bins": _bin_ids(confidence, num_bins),
        "nll": -log_probs[np.arange(n), labels],
        "brier": (probs**2).sum(axis=1) - 2 * probs[np.arange(n), labels] + 1,
        "classwise": _classwise_parts(probs, labels, num_bins),
    }  # fmt: skip


def _metrics(weights: np.ndarray, examples: dict[str, Any], num_bins: int, min_bin_count: int) -> dict[str, np.ndarray]:
    """Every metric for every row of per-example weights (R, N)."""
    e, n = examples, len(examples["labels"])
    counts, sums = _binned(weights, e["bins"], e["residual"], num_bins)
    return {
        "accuracy": weights @ e["correct"] / n,
        "ece": np.abs(sums).sum(axis=1) / n,
        "ace": _ace(weights, e["confidence"], e["residual"], num_bins),
        "classwise_ece": _classwise_ece(weights, e["probs"], e["labels"], e["classwise"]),
        "smece": _smece(weights, e["confidence"], e["correct"]),
        "mce": _mce(counts, sums, min_bin_count),
        "nll": weights @ e["nll"] / n,
        "brier": weights @ e["brier"] / n,
        "confidence": weights @ e["confidence"] / n,
    }


def calibration_metrics(
    logits: Any,
    labels: Any,
    num_bins: int = DEFAULT_NUM_BINS,
    min_bin_count: int = MCE_MIN_COUNT,
    bootstrap_resamples: int = 0,
    seed: int = 0,
) -> dict[str, Any]:
    """Every metric of the module docstring (`KEYS`); with `bootstrap_resamples` > 0 also `<key>_ci = [low, high]`,
    a 95 % percentile-bootstrap interval over that many resamples of the examples, drawn with `seed`."""
    logits, labels = _as_numpy(logits, labels)
    log_probs = log_softmax(logits)
    probs = torch.from_numpy(log_probs).exp().numpy()
    examples = _examples(probs, log_probs, labels, num_bins)
    point = _metrics(np.ones((1, len(labels))), examples, num_bins, min_bin_count)
    result: dict[str, Any] = {key: float(point[key][0]) for key in KEYS}
    if bootstrap_resamples > 0:
        n, rng = len(labels), np.random.default_rng(seed)
        chunks = []  # resamples in chunks of at most BOOTSTRAP_CHUNK counts: memory stays bounded for large N
        for start in range(0, bootstrap_resamples, max(1, BOOTSTRAP_CHUNK // n)):
            size = min(max(1, BOOTSTRAP_CHUNK // n), bootstrap_resamples - start)
            drawn = rng.integers(0, n, size=(size, n))  # n draws with replacement per resample
            counts = np.bincount((np.arange(size)[:, None] * n + drawn).ravel(), minlength=size * n).reshape(-1, n)
            chunks.append(_metrics(counts.astype(np.float32), examples, num_bins, min_bin_count))  # exact counts
        for key in KEYS:
            low, high = np.percentile(np.concatenate([chunk[key] for chunk in chunks]), [2.5, 97.5])
            result[f"{key}_ci"] = [float(low), float(high)]
    return result


def make_compute_metrics(num_bins: int = DEFAULT_NUM_BINS) -> Callable[[Any], dict[str, float]]:
    """A `compute_metrics` for `Trainer` reporting every metric of `calibration_metrics`."""

    def compute_metrics(eval_prediction: Any) -> dict[str, float]:
        logits = eval_prediction.predictions
        logits = logits[0] if isinstance(logits, tuple) else logits
        return calibration_metrics(logits, eval_prediction.label_ids, num_bins)

    return compute_metrics


compute_metrics = make_compute_metrics()


def evaluate_module_path() -> str:
    """Path of the bundled `evaluate` module: `evaluate.load(evaluate_module_path())` works offline."""
    return str(Path(__file__).parent)  # `evaluate` loads the folder's `calibration.py`
