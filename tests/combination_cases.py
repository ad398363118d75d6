"""The combination matrix of `test_combinations.py`: the cases, how each is built, and the probes its invariants use.

Shared with `scripts/combination_probe.py`, which runs the two-process cases under torchrun.

Each case is a CS-KD mode (`lambda0`: plain cross-entropy, `pairs`, `queue`) and a set of features switched on
together. `CASES` is a pairwise covering array: every pair of (mode, feature on/off) values appears in some case
(`test_cases_cover_every_pair_of_options` checks it), so a bug that needs two features at once meets a case.
"""

import itertools
from pathlib import Path
from typing import Any

import torch
from conftest import make_image_dataset, make_vit, training_args
from transformers import ViTForImageClassification

import hf_cskd.losses.mixing
from hf_cskd import CSKDTrainer

MODES = ("lambda0", "pairs", "queue")
FEATURES = ("mixup", "cutmix", "teacher", "label_smoothing", "ga4", "bf16", "stream", "tuple_model", "two_processes")
CASES: list[tuple[str, tuple[str, ...]]] = [
    ("lambda0", ()),
    ("pairs", ("cutmix", "teacher", "label_smoothing", "ga4", "bf16", "stream", "tuple_model", "two_processes")),
    ("queue", ("mixup", "bf16", "stream", "tuple_model", "two_processes")),
    ("queue", ("mixup", "cutmix", "teacher", "label_smoothing", "ga4")),
    ("pairs", ("mixup", "ga4", "two_processes")),
    ("lambda0", ("mixup", "teacher", "label_smoothing", "stream", "tuple_model")),
    ("lambda0", ("cutmix", "bf16")),
    ("pairs", ("label_smoothing", "tuple_model")),
    ("lambda0", ("teacher", "ga4", "stream", "two_processes")),
    ("queue", ()),
]
MAX_STEPS, SAVE_STEPS = 4, 2


def resumes_exactly(case: tuple[str, tuple[str, ...]]) -> bool:
    """Whether a resumed run must end with the uninterrupted run's weights. Not on a stream with gradient
    accumulation: plain `Trainer` (transformers 5.24) does not resume those exactly either, in 1 or 2 processes
    (measured with `to_iterable_dataset()`, 4 steps, resumed at step 2)."""
    return not {"stream", "ga4"} <= set(case[1])


def case_id(case: tuple[str, tuple[str, ...]]) -> str:
    return "-".join((case[0], *case[1]))


def uncovered_pairs(cases: list[tuple[str, tuple[str, ...]]]) -> set[tuple]:
    """The (option, value, option, value) pairs that no case holds."""
    levels = [MODES] + [(False, True)] * len(FEATURES)
    rows = [(mode, *(name in on for name in FEATURES)) for mode, on in cases]
    wanted = {(i, a, j, b) for i, j in itertools.combinations(range(len(levels)), 2)
              for a in levels[i] for b in levels[j]}  # fmt: skip
    held = {(i, row[i], j, row[j]) for row in rows for i, j in itertools.combinations(range(len(row)), 2)}
    return wanted - held


class TupleViTForImageClassification(ViTForImageClassification):
    """A classifier that returns tuples, as custom models do: `(loss, logits)` with labels, `(logits,)` without."""

    def forward(self, pixel_values=None, labels=None, **kwargs):
        return super().forward(pixel_values=pixel_values, labels=labels, **kwargs).to_tuple()


def make_model(case: tuple[str, tuple[str, ...]]) -> torch.nn.Module:
    model = make_vit(seed=0)
    if "tuple_model" in case[1]:
        tuple_model = TupleViTForImageClassification(model.config)
        tuple_model.load_state_dict(model.state_dict())
        return tuple_model
    return model


def training_data() -> Any:
    """48 images of 3 classes. At least one optimizer step's global batch (2 x 4 x 4): with less, a two-process run
    on a stream with gradient accumulation hangs in its first step (plain `Trainer` too, transformers 5.24)."""
    return make_image_dataset(per_class=16)


def held_out_data() -> Any:
    """Other images of the same classes (the class means are drawn first from the seed, the noise after)."""
    return make_image_dataset(per_class=24, seed=0)


def build(case: tuple[str, tuple[str, ...]], output_dir: Path, **overrides: Any) -> CSKDTrainer:
    """The case's trainer: a tiny ViT, `training_data()`, MAX_STEPS steps, a checkpoint every SAVE_STEPS."""
    mode, on = case[0], set(case[1])
    settings: dict[str, Any] = dict(
        per_device_train_batch_size=4, max_steps=MAX_STEPS, save_strategy="steps", save_steps=SAVE_STEPS,
        cskd_lambda=0.0 if mode == "lambda0" else 1.0, cskd_mode="queue" if mode == "queue" else "pairs",
        mixup_alpha=0.4 if "mixup" in on else 0.0, cutmix_alpha=1.0 if "cutmix" in on else 0.0,
        label_smoothing_factor=0.1 if "label_smoothing" in on else 0.0,
        gradient_accumulation_steps=4 if "ga4" in on else 1, bf16="bf16" in on,
        ddp_find_unused_parameters=False,
    )  # fmt: skip
    if mode == "queue":
        settings["cskd_queue_size"] = 2
    settings.update(overrides)
    args = training_args(output_dir.parent, **settings)
    args.output_dir = str(output_dir)
    data = training_data()
    if "stream" in on:
        data = data.to_iterable_dataset()
    teacher = make_vit(seed=7) if "teacher" in on else None
    return CSKDTrainer(model=make_model(case), args=args, train_dataset=data, teacher_model=teacher)


def final_weights(trainer: CSKDTrainer) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in trainer.accelerator.unwrap_model(trainer.model).state_dict().items()}


class QueuePurityProbe:
    """Checks at every step that each prediction entering the queue came from a row that saw its own image alone.

    It records the batch's images before mixing (`hf_cskd.losses.mixing.mix_pixels`) and what the model was fed (a forward
    pre-hook), and compares the queue before and after each `ClassQueue.draw_and_push`: every slot written from one
    of this process's rows (`rows`: their slice among the gathered ones) must hold a row whose input was unmixed.
    """

    def __init__(self, trainer: CSKDTrainer, rows: slice | None = None):
        self.original: torch.Tensor | None = None
        self.fed: torch.Tensor | None = None
        self.clean_entries = self.mixed_rows = 0
        self.impure: list[str] = []
        self.rows = rows
        model = trainer.accelerator.unwrap_model(trainer.model)
        model.register_forward_pre_hook(self._record_input, with_kwargs=True)
        self._mix_pixels = hf_cskd.losses.mixing.mix_pixels
        hf_cskd.losses.mixing.mix_pixels = self._record_original
        self.queue = trainer.cskd_targets.queue
        self._draw_and_push = self.queue.draw_and_push
        self.queue.draw_and_push = self._check_push

    def close(self) -> None:
        hf_cskd.losses.mixing.mix_pixels = self._mix_pixels

    def _record_input(self, module, args, kwargs):
        if module.training:
            self.fed = kwargs["pixel_values"].detach().clone()

    def _record_original(self, pixel_values, mix):
        self.original = pixel_values.detach().clone()
        return self._mix_pixels(pixel_values, mix)

    def _check_push(self, logits, *args, **kwargs):
        before = self.queue.logits.clone()
        result = self._draw_and_push(logits, *args, **kwargs)
        local = logits[self.rows if self.rows is not None else slice(0, logits.shape[0])].float()
        original = self.original if self.original is not None else self.fed
        # Mixing a row with a copy of itself (a stream's last batch repeats rows) leaves its image, up to rounding.
        mixed = [not torch.allclose(self.fed[r], original[r], rtol=1e-5, atol=1e-6) for r in range(local.shape[0])]
        self.mixed_rows += sum(mixed)
        written = (self.queue.logits != before).any(dim=-1).nonzero().tolist()
        start = (self.rows or slice(0)).start or 0
        for label, slot in written:
            # The rows (of all processes) whose prediction the slot holds; at bf16 a tiny model's predictions of
            # different images can coincide, so a slot is impure only when every row it matches is a mixed one of ours.
            found = (logits.float() == self.queue.logits[label, slot]).all(dim=-1).nonzero().flatten().tolist()
            matches = [row - start for row in found if 0 <= row - start < local.shape[0]]
            if not matches or len(matches) < len(found):  # (also) another process's row
                continue
            if all(mixed[row] for row in matches):
                self.impure.append(f"class {label} slot {slot} holds the prediction of a mixed image "
                                   f"(rows {matches} of {local.shape[0]}, {sum(mixed)} mixed)")  # fmt: skip
            else:
                self.clean_entries += 1
        self.original = None
        return result


def logits_of(model: torch.nn.Module, pixel_values: torch.Tensor) -> torch.Tensor:
    """The model's float32 logits (past the autocast wrapper Accelerate puts on `forward` under bf16)."""
    from hf_cskd.models.outputs import model_logits

    model.eval()
    forward = getattr(model, "_original_forward", model.forward)
    with torch.no_grad():
        return model_logits(forward(pixel_values=pixel_values)).float()
