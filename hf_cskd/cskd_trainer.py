"""`CSKDTrainer`: a `Trainer` that adds the class-wise self-knowledge-distillation term."""

import fnmatch
import json
import math
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from huggingface_hub import HfApi
from huggingface_hub.errors import HfHubHTTPError
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import PreTrainedModel, Trainer, TrainerCallback, TrainingArguments
from transformers.trainer_utils import HubStrategy
from transformers.utils import SAFE_WEIGHTS_NAME, logging
from transformers.utils.hub import PushInProgress

from .calibration import calibration_metrics
from .collator import DataCollatorForClassPairs
from .cskd_config import CSKDConfig
from .data_errors import NamedRows
from .hub import PICKLES, hub_permission_error, upload_or_explain
from .losses import class_wise_kd_loss
from .model_card import METRICS, build_model_card, card_hyperparameters, task_of
from .pairing import ClassPairedDataset, is_iterable
from .stream_pairing import StreamPairedDataset
from .targets import ExampleIdDataset, PairTargets, QueueTargets, TargetSource, model_logits
from .temperature_scaling import bake_temperature, fit_temperature, temperature_on_bound
from .training_state import (
    checkpoint_is_complete,
    has_state,
    last_complete_checkpoint,
    load_state,
    rng_states,
    save_state,
    set_rng_states,
)

logger = logging.get_logger(__name__)

TARGETS_NAME = "cskd_targets.safetensors"
"""The target source's state (the queue) in each checkpoint."""
MODEL_FILES = ("config.json", "generation_config.json", "model*.safetensors", "model.safetensors.index.json",
               "adapter_config.json", "adapter_model.safetensors")  # fmt: skip


class PairEpochCallback(TrainerCallback):
    """Tell the `ClassPairedDataset` which epoch starts, so that pairs change every epoch.

    Accelerate forwards `set_epoch` to the dataset only when no sampler takes it (it does not in
    distributed runs), so the trainer does it itself, on every rank, before the epoch's
    DataLoader workers start. On resume, `state.epoch` (e.g. 1.5) gives the interrupted epoch.
    """

    def on_epoch_begin(self, args, state, control, train_dataloader=None, **kwargs):
        dataset = getattr(train_dataloader, "dataset", None)
        if isinstance(dataset, ClassPairedDataset | StreamPairedDataset):
            dataset.set_epoch(math.floor(state.epoch or 0))


class CSKDTrainer(Trainer):
    """`Trainer` with Class-wise Self-Knowledge Distillation (Yun et al., CVPR 2020).

    A drop-in replacement: same constructor, same data. Each step adds
    `cskd_lambda · class_wise_kd_loss(f(x), target)` to the model's own loss, where the target is
    a prediction for another example of `x`'s class: from a second forward of the same model in
    train mode, without gradient (`cskd_mode="pairs"`, the paper's: the training set is wrapped in
    a `ClassPairedDataset`), or drawn from a queue of recent predictions (`"queue"`). The target
    source (`targets.py`) prepares the data; the collator is wrapped in a
    `DataCollatorForClassPairs`. Evaluation and prediction are plain `Trainer`. Checkpoints hold
    no pickles and resume from the last complete one.

    `args` may be a `CSKDConfig` or plain `TrainingArguments` (then the CS-KD defaults apply).
    """

    def __init__(
        self,
        model: nn.Module | None = None,
        args: TrainingArguments | None = None,
        data_collator: Callable | None = None,
        train_dataset: Any = None,
        eval_dataset: Any = None,
        processing_class: Any = None,
        model_init: Callable[..., nn.Module] | None = None,
        compute_loss_func: Callable | None = None,
        compute_metrics: Callable | None = None,
        callbacks: list | None = None,
        optimizers: tuple = (None, None),
        optimizer_cls_and_kwargs: tuple | None = None,
        preprocess_logits_for_metrics: Callable | None = None,
    ):
        if args is None:
            args = CSKDConfig(output_dir="trainer_output")
        elif not isinstance(args, CSKDConfig):
            values = {k: v for k, v in args.to_dict().items() if k in CSKDConfig.__dataclass_fields__}
            values["hub_token"] = args.hub_token  # to_dict() masks it
            args = CSKDConfig(**values)
        super().__init__(
            model=model,
            args=args,
            data_collator=data_collator,
            train_dataset=train_dataset,
            eval_dataset=eval_dataset,
            processing_class=processing_class,
            model_init=model_init,
            compute_loss_func=compute_loss_func,
            compute_metrics=compute_metrics,
            callbacks=callbacks,
            optimizers=optimizers,
            optimizer_cls_and_kwargs=optimizer_cls_and_kwargs,
            preprocess_logits_for_metrics=preprocess_logits_for_metrics,
        )
        self._check_classification_head()
        self.add_callback(PairEpochCallback)
        if not isinstance(self.data_collator, DataCollatorForClassPairs):
            self.data_collator = DataCollatorForClassPairs(self.data_collator)
        self.cskd_targets = self._target_source(train_dataset)
        # Prepare now, so that bad labels fail here rather than after the first training steps.
        self._prepare_train_dataset()
        self._cskd_sums: dict[str, torch.Tensor] = {}
        self._cskd_micro_steps = 0
        self._cskd_first_step = 0
        self._normalizes_by_count: bool | None = None  # found out at a training step
        self.calibration: dict[str, Any] | None = None  # set by `calibrate()`

    # ---- data -------------------------------------------------------------------------------

    def _check_classification_head(self) -> None:
        config = getattr(self.accelerator.unwrap_model(self.model), "config", None)
        if config is None:
            return
        problem_type = getattr(config, "problem_type", None)
        if getattr(config, "num_labels", 2) < 2 or problem_type == "regression":
            raise ValueError(
                "CS-KD distills class probabilities, but this model has a regression head "
                f"(num_labels={config.num_labels}, problem_type={problem_type!r}). Build the model with "
                "`num_labels` equal to the number of classes (>= 2)."
            )
        if problem_type == "multi_label_classification":
            raise ValueError(
                "CS-KD pairs examples of one class, but this model is set up for multi-label classification. "
                "Use single-label targets and `problem_type='single_label_classification'`."
            )

    def _target_source(self, dataset: Any) -> TargetSource | None:
        """Pairs (the paper's) or the queue, as `cskd_mode` says; none for plain cross-entropy."""
        if self.args.cskd_lambda == 0 and not isinstance(dataset, ClassPairedDataset):
            logger.info("cskd_lambda=0: training with the model's own loss only, without CS-KD targets.")
            return None
        config = getattr(self.accelerator.unwrap_model(self.model), "config", None)
        num_labels = getattr(config, "num_labels", None)
        seed = self.args.data_seed if self.args.data_seed is not None else self.args.seed
        if self.args.cskd_mode == "queue":
            if num_labels is None:
                raise ValueError("cskd_mode='queue' needs the number of classes: give the model a `config.num_labels`.")
            return QueueTargets(
                num_labels, self.args.cskd_queue_size, self.args.cskd_label_column, seed, self.args.device,
                self.accelerator,
            )  # fmt: skip
        return PairTargets(self.args.cskd_label_column, num_labels, seed, stream_buffer_size=self.args.cskd_queue_size)

    def _prepare_train_dataset(self) -> None:
        if self.cskd_targets is not None:
            self.train_dataset = self.cskd_targets.prepare_dataset(self.train_dataset)

    def get_train_dataloader(self) -> torch.utils.data.DataLoader:
        self._prepare_train_dataset()  # also when the dataset was set after __init__
        return super().get_train_dataloader()

    def _get_dataloader(self, dataset: Any, description: str, *args: Any, is_training: bool = False, **kwargs: Any):
        """Evaluation and prediction sets name the rows that cannot be loaded (the training set's wrappers do too)."""
        if not is_training and dataset is not None and not is_iterable(dataset):
            dataset = NamedRows(dataset, split=description.lower())
        return super()._get_dataloader(dataset, description, *args, is_training=is_training, **kwargs)

    def _get_train_sampler(self, train_dataset: Any = None) -> torch.utils.data.Sampler | None:
        """Sample as for the wrapped dataset: same indices, and `group_by_length` reads its length column."""
        dataset = train_dataset if train_dataset is not None else self.train_dataset
        if isinstance(dataset, ClassPairedDataset | ExampleIdDataset):
            dataset = dataset.dataset
        return super()._get_train_sampler(dataset)

    def _set_signature_columns_if_needed(self) -> None:
        # Keep what the target source adds when `remove_unused_columns=True` drops what the model does not take.
        if self._signature_columns is None:
            super()._set_signature_columns_if_needed()
            if self.cskd_targets is not None:
                self._signature_columns += self.cskd_targets.input_names(self._signature_columns)

    # ---- loss -------------------------------------------------------------------------------

    def compute_loss(
        self,
        model: nn.Module,
        inputs: dict[str, Any],
        return_outputs: bool = False,
        num_items_in_batch: torch.Tensor | int | None = None,
    ) -> torch.Tensor | tuple[torch.Tensor, Any]:
        extras = self.cskd_targets.pop_inputs(inputs) if self.cskd_targets is not None else {}
        if self.cskd_targets is None or not model.training:
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)

        labels = inputs.get("labels")  # before Trainer pops it for label smoothing
        loss, outputs = super().compute_loss(model, inputs, return_outputs=True, num_items_in_batch=num_items_in_batch)
        logits = model_logits(outputs)
        targets, stats = self.cskd_targets.targets(model, extras, logits, labels)
        kd = class_wise_kd_loss(logits, targets, self.args.cskd_temperature, reduction="sum")
        kd = kd / self._kd_denominator(loss, logits, labels, num_items_in_batch)
        self._accumulate_for_logs(loss, kd, num_items_in_batch, stats)
        loss = loss + self.args.cskd_lambda * kd
        return (loss, outputs) if return_outputs else loss

    def _loss_is_scaled_for_ga(self, num_items_in_batch: torch.Tensor | int | None) -> bool:
        """The rule `Trainer.training_step` applies to decide whether to divide the loss by GA steps."""
        if self.loss_is_scaled_for_ga is not None:
            return self.loss_is_scaled_for_ga
        return (self.model_accepts_loss_kwargs and num_items_in_batch is not None) or self.compute_loss_func is not None

    def _loss_scale(self) -> int:
        """What `Trainer.compute_loss` multiplies the loss by under `average_tokens_across_devices`."""
        if not self.args.average_tokens_across_devices:
            return 1
        return self.accelerator.num_processes // self.get_tp_size() if self.args.n_gpu <= 1 else self.args.n_gpu

    def _model_normalizes_by_count(
        self, loss: torch.Tensor, logits: torch.Tensor, labels: torch.Tensor | None, num_items_in_batch: Any
    ) -> bool:
        """Whether the model's own loss divides by `num_items_in_batch`, as `Trainer` assumes when it passes it.

        Some models take loss kwargs but ignore the count (BERT in transformers 5.24 returns a
        per-micro-batch mean): `Trainer` then sums those means over the accumulation steps. Found out
        once, by comparing the model's loss with the cross-entropy of its logits normalized both
        ways, at the first step where the two differ (never, without accumulation on one process).
        """
        if self._normalizes_by_count is not None:
            return self._normalizes_by_count
        from_model = self.label_smoother is None and self.compute_loss_func is None and self.model_accepts_loss_kwargs
        if not from_model or labels is None or labels.ndim != 1 or labels.is_floating_point():
            return True  # Trainer's label smoother and `compute_loss_func` receive and honour the count
        if self.current_gradient_accumulation_steps == 1 and self._loss_scale() == 1:
            return True  # the count is this micro-batch's: both normalizations agree
        with torch.no_grad():
            total = F.cross_entropy(logits.float(), labels, reduction="sum", ignore_index=-100)
            count = (labels != -100).sum()
            model_loss = loss.detach().float() / self._loss_scale()
            by_count, by_mean = total / num_items_in_batch, total / count
            if torch.isclose(by_count, by_mean, rtol=1e-3):
                return True
            self._normalizes_by_count = bool((model_loss - by_count).abs() <= (model_loss - by_mean).abs())
        if not self._normalizes_by_count:
            logger.warning(
                f"{type(self.accelerator.unwrap_model(self.model)).__name__}'s loss ignores `num_items_in_batch` (a "
                "per-micro-batch mean), so Trainer sums it over the gradient-accumulation steps. The CS-KD term is "
                "normalized the same way, so λ weighs it against the cross-entropy as without accumulation."
            )
        return self._normalizes_by_count

    def _kd_denominator(
        self, loss: torch.Tensor, logits: torch.Tensor, labels: torch.Tensor | None, num_items_in_batch: Any
    ) -> Any:
        """Normalize the summed KD term exactly as the model's own loss is, so λ means the same at any GA.

        Without `num_items_in_batch` the model's loss is a per-batch mean that `training_step`
        divides by the gradient-accumulation steps, so the KD term is a batch mean too. With it,
        the model divides its summed loss by the examples of the whole accumulated (and, with
        `average_tokens_across_devices`, all-rank) batch, and `compute_loss` multiplies by the
        number of processes; the KD term gets the same treatment. A model that ignores the count
        returns a micro-batch mean that `Trainer` does not divide: the KD term is a micro-batch mean.
        """
        batch_size = logits.shape[0]
        if not self._loss_is_scaled_for_ga(num_items_in_batch):
            return batch_size
        if num_items_in_batch is None:
            return batch_size * self.current_gradient_accumulation_steps
        if not self._model_normalizes_by_count(loss, logits, labels, num_items_in_batch):
            return batch_size / self._loss_scale()
        return num_items_in_batch / self._loss_scale()

    # ---- logs -------------------------------------------------------------------------------

    def _accumulate_for_logs(
        self,
        ce: torch.Tensor,
        kd: torch.Tensor,
        num_items_in_batch: torch.Tensor | int | None,
        stats: dict[str, torch.Tensor],
    ) -> None:
        """Sum both terms in the units of `Trainer`'s logged `loss`, and the source's statistics, without a sync."""
        if not self._cskd_sums:
            self._cskd_first_step = self.state.global_step  # the optimizer step these sums start at
            self._cskd_micro_steps = 0
        divisor = 1 if self._loss_is_scaled_for_ga(num_items_in_batch) else self.current_gradient_accumulation_steps
        for name, value in (("ce_loss", ce), ("cskd_loss", kd)):
            value = value.detach().float().mean() / divisor
            self._cskd_sums[name] = self._cskd_sums.get(name, 0) + value
        for name, value in stats.items():
            self._cskd_sums[name] = self._cskd_sums.get(name, 0) + value.detach().float()
        self._cskd_micro_steps += 1

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        """Add `ce_loss`, `cskd_loss` (before λ) and the source's statistics to each training log.

        The loss terms are averaged per optimizer step, like `loss`; statistics (e.g.
        `cskd_queue_hit`) per micro-batch.
        """
        if "loss" in logs and self._cskd_sums:
            steps = max(self.state.global_step - self._cskd_first_step, 1)
            for name, total in self._cskd_sums.items():
                count = steps if name in ("ce_loss", "cskd_loss") else self._cskd_micro_steps
                logs[name] = self.accelerator.reduce(total.detach(), reduction="mean").item() / count
            self._cskd_sums = {}
        super().log(logs, start_time)

    # ---- checkpoints --------------------------------------------------------------------------

    def train(self, resume_from_checkpoint: str | bool | None = None, trial: Any = None, **kwargs: Any) -> Any:
        """`Trainer.train`; `resume_from_checkpoint=True` resumes from the last *complete* checkpoint.

        A run killed while saving leaves a checkpoint folder without (or with a truncated)
        `trainer_state.json`, which `Trainer` writes last: such folders are skipped with a warning
        (a path to one is refused), instead of being loaded half-written.
        """
        if resume_from_checkpoint is True or str(resume_from_checkpoint).lower() == "true":
            resume_from_checkpoint = last_complete_checkpoint(self.args.output_dir)
            if resume_from_checkpoint is None:
                raise ValueError(f"No complete checkpoint found in {self.args.output_dir} to resume from.")
        elif isinstance(resume_from_checkpoint, str) and not checkpoint_is_complete(resume_from_checkpoint):
            last = last_complete_checkpoint(os.path.dirname(os.path.abspath(resume_from_checkpoint)))
            raise ValueError(
                f"{resume_from_checkpoint} is not a complete checkpoint (no readable trainer_state.json: the run was "
                f"probably stopped while saving it). Resume from {last or 'an earlier checkpoint'} instead, or pass "
                "resume_from_checkpoint=True to pick the last complete one."
            )
        return super().train(resume_from_checkpoint=resume_from_checkpoint, trial=trial, **kwargs)

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model: nn.Module | None = None) -> None:
        super()._load_from_checkpoint(resume_from_checkpoint, model)
        self._reload_renamed_weights(model if model is not None else self.model, resume_from_checkpoint)

    def _engine_saves_state(self) -> bool:
        """DeepSpeed and FSDP write their own (sharded) training state: left to them."""
        return self.is_deepspeed_enabled or self.is_fsdp_enabled

    def _save_optimizer_and_scheduler(self, output_dir: str) -> None:
        """Optimizer and scheduler states as safetensors + JSON (`Trainer` pickles them)."""
        if self._engine_saves_state():
            return super()._save_optimizer_and_scheduler(output_dir)
        if self.args.should_save:
            save_state(self.optimizer.state_dict(), os.path.join(output_dir, "optimizer"))
            save_state(self.lr_scheduler.state_dict(), os.path.join(output_dir, "scheduler"))

    def _load_optimizer_and_scheduler(self, checkpoint: str | None) -> None:
        if checkpoint is None or not has_state(os.path.join(checkpoint, "optimizer")):
            return super()._load_optimizer_and_scheduler(checkpoint)  # a checkpoint of plain Trainer or an engine
        self.optimizer.load_state_dict(load_state(os.path.join(checkpoint, "optimizer")))
        self.lr_scheduler.load_state_dict(load_state(os.path.join(checkpoint, "scheduler")))

    def _save_scaler(self, output_dir: str) -> None:
        scaler = getattr(self.accelerator, "scaler", None)
        if self._engine_saves_state():
            return super()._save_scaler(output_dir)
        if scaler is not None and self.args.should_save:
            save_state(scaler.state_dict(), os.path.join(output_dir, "scaler"))

    def _load_scaler(self, checkpoint: str | None) -> None:
        if checkpoint is None or not has_state(os.path.join(checkpoint, "scaler")):
            return super()._load_scaler(checkpoint)
        self.accelerator.scaler.load_state_dict(load_state(os.path.join(checkpoint, "scaler")))

    def _rng_state_path(self, folder: str) -> str:
        name = "rng_state" if self.args.world_size <= 1 else f"rng_state_{self.args.process_index}"
        return os.path.join(folder, name)

    def _save_rng_state(self, output_dir: str) -> None:
        """Every process's RNG states, and the target source's state (the queue), without pickles."""
        if self._engine_saves_state():
            super()._save_rng_state(output_dir)
        else:
            save_state(rng_states(), self._rng_state_path(output_dir))
        state = self.cskd_targets.state_dict() if self.cskd_targets is not None else {}
        if state and self.args.should_save:
            save_file(
                {k: v.detach().cpu().contiguous() for k, v in state.items()}, os.path.join(output_dir, TARGETS_NAME)
            )

    def _load_rng_state(self, checkpoint: str | None) -> None:
        if checkpoint is not None and has_state(self._rng_state_path(checkpoint)):
            set_rng_states(load_state(self._rng_state_path(checkpoint)))
        else:
            super()._load_rng_state(checkpoint)
        if checkpoint is None or self.cskd_targets is None or not self.cskd_targets.state_dict():
            return
        path = os.path.join(checkpoint, TARGETS_NAME)
        if os.path.isfile(path):
            self.cskd_targets.load_state_dict(load_file(path))
        else:
            logger.warning(f"{checkpoint} holds no {TARGETS_NAME}: the CS-KD queue restarts empty.")

    def _load_best_model(self) -> None:
        super()._load_best_model()
        self._reload_renamed_weights(self.model, self.state.best_model_checkpoint)

    def _reload_renamed_weights(self, model: nn.Module, folder: str | None) -> None:
        """Work around transformers 5.24 resuming with stale weights.

        `save_pretrained` writes some models (ViT among them) under their legacy parameter names,
        and `Trainer` reloads checkpoints with a non-strict `load_state_dict`, which then silently
        skips those tensors. `from_pretrained` knows the renaming, so reload through it.
        """
        path = os.path.join(folder or "", SAFE_WEIGHTS_NAME)
        if not isinstance(model, PreTrainedModel) or self.is_fsdp_enabled or self.is_deepspeed_enabled:
            return
        if not os.path.isfile(path):
            return
        with safe_open(path, framework="pt") as file:
            if set(file.keys()) <= set(model.state_dict()):
                return
        logger.info(f"Reloading {path} through from_pretrained to map renamed parameters.")
        reloaded = type(model).from_pretrained(folder, config=model.config)
        model.load_state_dict(reloaded.state_dict())

    def _write_training_args(self, folder: str) -> None:
        """The training arguments as JSON (tokens are masked by `to_dict()`), where `Trainer` pickles them."""
        with open(os.path.join(folder, "training_args.json"), "w") as file:
            file.write(self.args.to_json_string())

    def _save(self, output_dir: str | None = None, state_dict: dict | None = None) -> None:
        """Save as `Trainer` does, but the training arguments as JSON instead of a pickle."""
        super()._save(output_dir, state_dict)
        output_dir = output_dir if output_dir is not None else self.args.output_dir
        pickled = os.path.join(output_dir, "training_args.bin")
        if os.path.isfile(pickled):
            os.remove(pickled)
        self._write_training_args(output_dir)
        if self.calibration is not None:
            with open(os.path.join(output_dir, "calibration.json"), "w") as file:
                json.dump(self.calibration, file, indent=2)

    # ---- calibration and model card -----------------------------------------------------------

    def calibrate(self, eval_dataset: Any = None, split_name: str = "validation") -> float:
        """Fit a temperature on held-out data (never the test split) and bake it into the head.

        The model's logits become `logits / T`: same predictions, calibrated probabilities, for
        any later `evaluate`, `save_model`, `push_to_hub` or plain `from_pretrained`. Returns T.
        """
        if self.is_fsdp_enabled or self.is_deepspeed_enabled:
            raise ValueError(
                "calibrate() changes the classification head in place, which sharded (FSDP/DeepSpeed) models do not "
                "allow. Save the model, then calibrate the saved checkpoint in a single process."
            )
        dataset = eval_dataset if eval_dataset is not None else self.eval_dataset
        if dataset is None:
            raise ValueError("calibrate() needs held-out data: pass `eval_dataset` or give the trainer one.")
        prediction = self.predict(dataset, metric_key_prefix="calibration")
        logits = prediction.predictions[0] if isinstance(prediction.predictions, tuple) else prediction.predictions
        temperature = fit_temperature(logits, prediction.label_ids)
        batch = self._prepare_inputs(next(iter(self.get_eval_dataloader(dataset))))
        example_inputs = {k: v for k, v in batch.items() if k not in self.label_names and k != "labels"}
        bake_temperature(self.accelerator.unwrap_model(self.model), temperature, example_inputs)
        self.calibration = {
            "temperature": temperature,
            "split": split_name,
            "before": calibration_metrics(logits, prediction.label_ids),
            "after": calibration_metrics(logits / temperature, prediction.label_ids),
        }
        problem = temperature_on_bound(temperature, logits, prediction.label_ids, data=f"the {split_name} split")
        if problem is not None:  # kept in calibration.json and stated in the model card
            self.calibration["warning"] = problem
        logger.info(f"Temperature scaling: T = {temperature:.4f} (fitted on {split_name}).")
        return temperature

    def _latest_eval_metrics(self) -> dict[str, float]:
        """The metrics of the latest evaluation (accuracy and loss at least, when that is all there is)."""
        for log in reversed(self.state.log_history):
            metrics = {k[len("eval_") :]: v for k, v in log.items() if k.startswith("eval_")}
            if {"accuracy", "loss"} & set(metrics):
                return {k: v for k, v in metrics.items() if k in METRICS or k == "confidence"}
        return {}

    def create_model_card(
        self,
        language: str | None = None,
        license: str | None = None,
        tags: str | list[str] | None = None,
        model_name: str | None = None,
        finetuned_from: str | None = None,
        tasks: str | list[str] | None = None,
        dataset_tags: str | list[str] | None = None,
        dataset: str | list[str] | None = None,
        dataset_args: str | list[str] | None = None,
        results: dict[str, dict[str, float]] | None = None,
        eval_split: str = "validation",
        reliability_diagram: str | None = None,
        num_bins: int | None = None,
    ) -> None:
        """Write the CS-KD model card (`README.md`) to `output_dir`, as `push_to_hub` expects.

        Same arguments as `Trainer.create_model_card` (`tasks` sets the card's task, else the model
        class does), plus `results`: a row label -> metrics (accuracy, ece, nll, loss, ...), by
        default the latest evaluation. Extra arguments of `push_to_hub` arrive here.
        """
        if not self.is_world_process_zero():
            return
        model = self.accelerator.unwrap_model(self.model)
        config = model.config
        if finetuned_from is None:
            finetuned_from = getattr(config, "_name_or_path", None)
        if results is None:
            latest = self._latest_eval_metrics()
            results = {"CS-KD" if self.args.cskd_lambda > 0 else "cross-entropy": latest} if latest else {}
        # As in Trainer: `dataset` is the name shown, `dataset_tags` the Hub id(s) for the metadata.
        dataset_name = dataset[0] if isinstance(dataset, list) else dataset
        dataset_id = dataset_tags[0] if isinstance(dataset_tags, list) else dataset_tags
        model_name = model_name or os.path.basename(os.path.abspath(self.args.output_dir))
        card = build_model_card(
            model_name=model_name,
            results=results,
            dataset_name=dataset_name or dataset_id or "the training data",
            dataset_id=dataset_id,
            eval_split=eval_split,
            cskd={
                "lambda": self.args.cskd_lambda,
                "temperature": self.args.cskd_temperature,
                "mode": self.args.cskd_mode,
                "queue_size": self.args.cskd_queue_size,
            },
            num_labels=config.num_labels,
            task=task_of(model, tasks),
            hyperparameters=card_hyperparameters(self.args),
            base_model=finetuned_from,
            calibration=self.calibration,
            reliability_diagram=reliability_diagram,
            num_bins=num_bins,
            repo_id=self.hub_model_id if self.args.push_to_hub else None,
            license=license,
            language=language,
            tags=[tags] if isinstance(tags, str) else tags,
        )
        card.save(os.path.join(self.args.output_dir, "README.md"))

    # ---- Hub -----------------------------------------------------------------------------------

    def init_hf_repo(self, token: str | None = None, private: bool | None = None) -> None:
        try:
            super().init_hf_repo(token=token, private=private)
        except HfHubHTTPError as error:
            raise hub_permission_error(error, self.args.hub_model_id or self.args.output_dir) from error

    def _push_from_checkpoint(self, checkpoint_folder: str) -> None:
        """Push on each save (`hub_strategy` every_save / checkpoint / all_checkpoints), as `Trainer` does,
        but without the pickled `training_args.bin` that `Trainer`'s version writes and uploads."""
        if not self.is_world_process_zero() or self.args.hub_strategy == HubStrategy.END:
            return
        if not self.args.hub_always_push and self.push_in_progress is not None and not self.push_in_progress.is_done():
            return
        self.callback_handler.on_push_begin(self.args, self.state, self.control)
        output_dir = self.args.output_dir
        for name in os.listdir(checkpoint_folder):  # the model files; the training state stays in the checkpoint
            if any(fnmatch.fnmatch(name, pattern) for pattern in MODEL_FILES):
                shutil.copy(os.path.join(checkpoint_folder, name), os.path.join(output_dir, name))
        if self.processing_class is not None:
            self.processing_class.save_pretrained(output_dir)
        self._write_training_args(output_dir)
        step = (
            f"step {self.state.global_step}" if self.args.save_strategy == "steps" else f"epoch {int(self.state.epoch)}"
        )
        upload = {"repo_id": self.hub_model_id, "token": self.args.hub_token, "revision": self.args.hub_revision,
                  "run_as_future": True}  # fmt: skip
        api = HfApi()
        jobs = [
            api.upload_folder(
                folder_path=output_dir,
                commit_message=f"Training in progress, {step}",
                ignore_patterns=["_*", "checkpoint-*", *PICKLES],
                **upload,
            )  # fmt: skip
        ]
        if self.args.hub_strategy in (HubStrategy.CHECKPOINT, HubStrategy.ALL_CHECKPOINTS):
            in_repo = "last-checkpoint" if self.args.hub_strategy == HubStrategy.CHECKPOINT else None
            jobs.append(
                api.upload_folder(
                    folder_path=checkpoint_folder,
                    path_in_repo=in_repo or Path(checkpoint_folder).name,
                    commit_message=f"Training in progress, {step}, checkpoint",
                    ignore_patterns=PICKLES,
                    **upload,
                )  # fmt: skip
            )
        if self.push_in_progress is None or self.push_in_progress.is_done():
            self.push_in_progress = PushInProgress(jobs)
        else:
            self.push_in_progress.jobs.extend(jobs)

    def push_to_hub(self, commit_message: str | None = "End of training", blocking: bool = True, **kwargs) -> Any:
        """`Trainer.push_to_hub` with the CS-KD card; 401/403 and uploads that fail for good become errors that
        say what to do and whether anything reached the Hub (`hf_cskd.hub.upload_or_explain`)."""
        if self.hub_model_id is None:
            self.init_hf_repo(token=self.args.hub_token)
        upload = lambda: super(CSKDTrainer, self).push_to_hub(  # noqa: E731
            commit_message=commit_message, blocking=blocking, **kwargs
        )
        if not blocking or not self.is_world_process_zero():
            return upload()
        api = HfApi(token=self.args.hub_token)
        return upload_or_explain(upload, api, self.hub_model_id, self.args.hub_revision)
