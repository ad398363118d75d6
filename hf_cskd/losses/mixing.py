"""Mixup and CutMix on the anchors of a batch, and what they mean for the CS-KD target.

A mixed batch is `x̃_i = λ·x_i + (1−λ)·x_{p(i)}` (Mixup) or `x_i` with a box of `x_{p(i)}` pasted in
(CutMix, λ = the share of `x_i`'s pixels), one λ and one permutation `p` per batch, as in timm's
batch mode. Its label is `λ·y_i + (1−λ)·y_{p(i)}`. λ is folded to ≥ 0.5: each mixed image is
mostly its own row's example (the same Mixup distribution, since `p` and its inverse are equally
likely; CutMix then always pastes the smaller part). So each anchor's dominant class is its own
label, which is what the queue files its prediction under.

CS-KD's target for an anchor of class c is a prediction for another example of class c; the mixed
anchor's target is the same mix of its two classes' targets, `λ·softmax(t_i/T) + (1−λ)·
softmax(t_{p(i)}/T)`, where `t_{p(i)}` is the target drawn for the partner (an example of class
`y_{p(i)}`). This is Mixup's label mixing applied to CS-KD's soft labels; at λ = 1 it is CS-KD. In queue
mode an anchor whose class or whose partner's class has no queued prediction yet keeps its unmixed
target for that step. The CS-KD paper (section 4, compatibility with Mixup) reports the combination
but does not say how the pair term treats a mixed anchor, and the official code (alinlab/cs-kd
`train.py`) has no Mixup.

Queue mode keeps the queue pure. A queue entry must be a prediction for one example of its class, but
a mixed image's prediction is partly its partner's class (with λ near 0.5, half of it), and later
draws would mix it again. So in queue mode a share `cskd_queue_unmixed_share` (default 0.25) of each
mixed batch's rows is left unmixed (own image, own label, own target: λ_i = 1), and only those rows'
predictions enter the queue; the other rows are mixed as usual and still draw targets from it. A
share of each batch, rather than whole unmixed batches, keeps the queue filling at every step with
`mixup_prob = 1`; pairs mode needs none of this (its pairs are forwarded unmixed).
"""

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch


@dataclass(frozen=True)
class Mix:
    """One batch's mixing: the share `lam` of each mixed row's own example, the partner of each row, the CutMix box
    (top, left, height, width) or None for Mixup, and which rows are mixed (None: all of them)."""

    lam: float
    perm: torch.Tensor
    box: tuple[int, int, int, int] | None = None
    mixed: torch.Tensor | None = None

    def row_lam(self, device: torch.device | str | None = None) -> torch.Tensor:
        """λ_i per row: `lam` for a mixed row, 1 for a row left unmixed."""
        if self.mixed is None:
            return torch.full(self.perm.shape, self.lam, device=device)
        return torch.where(self.mixed.to(device), self.lam, 1.0)

    def unmixed(self, device: torch.device | str | None = None) -> torch.Tensor:
        """Which rows saw their own image only (their predictions may enter the queue)."""
        if self.mixed is None:
            return torch.zeros(self.perm.shape, dtype=torch.bool, device=device)
        return ~self.mixed.to(device)


def sample_mix(
    batch_size: int,
    height: int,
    width: int,
    mixup_alpha: float,
    cutmix_alpha: float,
    switch_prob: float,
    prob: float,
    rng: np.random.Generator,
    unmixed_share: float = 0.0,
) -> Mix | None:
    """Draw one batch's mixing (None: this batch is not mixed). With both alphas > 0, CutMix is chosen with
    probability `switch_prob`. CutMix's λ is the exact share of unpasted pixels once the box is clipped. With
    `unmixed_share` > 0, that share of the rows (at least one, chosen at random) is left unmixed."""
    if (mixup_alpha <= 0 and cutmix_alpha <= 0) or batch_size < 2 or rng.random() >= prob:
        return None
    cutmix = cutmix_alpha > 0 and (mixup_alpha <= 0 or rng.random() < switch_prob)
    lam = float(rng.beta(cutmix_alpha, cutmix_alpha) if cutmix else rng.beta(mixup_alpha, mixup_alpha))
    lam = max(lam, 1.0 - lam)
    perm = torch.from_numpy(rng.permutation(batch_size))
    mixed = None
    if unmixed_share > 0:
        mixed = torch.ones(batch_size, dtype=torch.bool)
        mixed[torch.from_numpy(rng.permutation(batch_size)[: max(1, round(unmixed_share * batch_size))])] = False
    if not cutmix:
        return Mix(lam, perm, mixed=mixed)
    ratio = math.sqrt(1.0 - lam)
    cut_h, cut_w = int(height * ratio), int(width * ratio)
    cy, cx = int(rng.integers(height)), int(rng.integers(width))
    top, bottom = np.clip([cy - cut_h // 2, cy + cut_h // 2], 0, height)
    left, right = np.clip([cx - cut_w // 2, cx + cut_w // 2], 0, width)
    box = (int(top), int(left), int(bottom - top), int(right - left))
    return Mix(1.0 - box[2] * box[3] / (height * width), perm, box, mixed)


def mix_pixels(pixel_values: torch.Tensor, mix: Mix) -> torch.Tensor:
    """The mixed images (a new tensor; the batch's own is left as it is). Unmixed rows keep their own image."""
    partner = pixel_values[mix.perm.to(pixel_values.device)]
    if mix.box is None:
        mixed = mix.lam * pixel_values + (1.0 - mix.lam) * partner
    else:
        top, left, height, width = mix.box
        mixed = pixel_values.clone()
        mixed[..., top : top + height, left : left + width] = partner[..., top : top + height, left : left + width]
    if mix.mixed is None:
        return mixed
    return torch.where(mix.mixed.to(pixel_values.device).view(-1, *[1] * (pixel_values.ndim - 1)), mixed, pixel_values)


def mixed_target_logits(
    targets: torch.Tensor, mix: Mix, temperature: float, has_target: torch.Tensor | None = None
) -> torch.Tensor:
    """Logits whose softmax at `temperature` is `λ·softmax(t_i/T) + (1−λ)·softmax(t_{p(i)}/T)`: T·log of that
    mixture (a distribution sums to 1, so its log is its own log-softmax), for the unchanged KD function.

    `has_target` (per row, from a queue still filling up) marks rows whose `targets` are real targets; the others
    hold the anchor's own logits. A row that lacks its own or its partner's target keeps `targets[i]` as it is:
    its KD term is what it would be unmixed (0 where it had no target)."""
    targets = targets.detach().float()
    perm = mix.perm.to(targets.device)
    log_own = torch.log_softmax(targets / temperature, dim=-1) + math.log(mix.lam)
    if mix.lam >= 1.0:
        mixed = temperature * log_own
    else:
        log_partner = torch.log_softmax(targets[perm] / temperature, dim=-1) + math.log(1.0 - mix.lam)
        mixed = temperature * torch.logaddexp(log_own, log_partner)
    keep = mix.unmixed(targets.device)  # rows left unmixed keep their own target
    if has_target is not None:
        keep = keep | ~(has_target & has_target[perm.to(has_target.device)]).to(targets.device)
    return torch.where(keep[:, None], targets, mixed)


class BatchMixer:
    """Mixes the training micro-batches of one run. Each draw is a function of (seed, the micro-batch's position in
    the run, process), the position being step x accumulation steps + the micro-batch within the step: a resumed
    run mixes exactly as the uninterrupted one, and the k-th micro-batch of a run with gradient accumulation is
    mixed as the k-th batch of a run without it."""

    def __init__(self) -> None:
        self.last = (-1, 0)  # (global step, micro-batch index) of the last draw

    def __call__(
        self, inputs: dict[str, Any], labels: Any, settings: Any, seed: int, step: int, process_index: int,
        queue_mode: bool = False, accumulation_steps: int = 1,
    ) -> Mix | None:  # fmt: skip
        """Mix `inputs["pixel_values"]` (replaced by the mixed images) as `settings` (`mixup_alpha`, `cutmix_alpha`,
        `mixup_switch_prob`, `mixup_prob`, and in `queue_mode` `cskd_queue_unmixed_share`) say; the `Mix`, or None
        when this batch is not mixed."""
        if settings.mixup_alpha <= 0 and settings.cutmix_alpha <= 0:
            return None
        pixels = inputs.get("pixel_values")
        if not torch.is_tensor(pixels) or pixels.ndim != 4 or labels is None or labels.ndim != 1:
            raise ValueError(
                "mixup_alpha / cutmix_alpha mix images: they need 4-D `pixel_values` and one class index per example "
                f"under `labels` (this batch has {sorted(inputs)}). Set both to 0 for other inputs."
            )
        micro = self.last[1] + 1 if self.last[0] == step else 0
        self.last = (step, micro)
        rng = np.random.default_rng([seed, step * accumulation_steps + micro, 0, process_index])
        height, width = pixels.shape[-2:]
        unmixed_share = settings.cskd_queue_unmixed_share if queue_mode else 0.0
        mix = sample_mix(len(pixels), height, width, settings.mixup_alpha, settings.cutmix_alpha,
                         settings.mixup_switch_prob, settings.mixup_prob, rng, unmixed_share)  # fmt: skip
        if mix is not None:
            inputs["pixel_values"] = mix_pixels(pixels, mix)
        return mix
