"""`CSKDTrainer`: a `Trainer` that adds the class-wise self-knowledge-distillation term.

It extends `Trainer` through its custom-loss contract (`compute_loss_func`: `hf_cskd.losses.training_loss`) and
public hooks, keeps `Trainer`'s checkpoints (each resumes the other's), and delegates calibration and the Hub to
`hf_cskd.calibration` and `hf_cskd.hub`. The private `Trainer` methods it overrides, each a few lines around `super()`:

| method | why | known to work with transformers |
|---|---|---|
| `_set_signature_columns_if_needed` | keep the target source's columns (pairs, example ids) when `remove_unused_columns=True` | 5.18 - 5.24 |
| `_get_train_sampler` | sample the wrapped training set as the dataset it wraps (same indices; `group_by_length` reads its length column) | 5.18 - 5.24 |
| `_save_rng_state` | write the queue (`cskd_targets.safetensors`) into the checkpoint before `trainer_state.json` marks it complete | 5.18 - 5.24 |
| `_load_from_checkpoint` | `Trainer` resumes some models (ViT) with stale weights: reload them by name (`checkpoints.reload_renamed_weights`), without Trainer's report on those keys | 5.18 - 5.24 |
"""

import os
from functools import partial
from typing import Any

import torch
from torch import nn
from transformers import Trainer, TrainingArguments
from transformers.utils import logging

from ..calibration.temperature import BOOTSTRAP_RESAMPLES, calibrate_model
from ..data.errors import NamedRows, transformed_rows
from ..hub.model_card import training_card
from ..hub.push import explained_refusals, upload_or_explain, write_hub_gitignore
from ..losses.mixing import BatchMixer
from ..losses.teacher import check_same_label_space, deepspeed_teacher, freeze_teacher, fsdp2_teacher, teacher_logits
from ..losses.training_loss import CSKDLoss, StepTerms
from ..models.outputs import check_single_label_classifier, loss_first
from ..targets import EpochCallback, QueueTargets, TargetSource, make_target_source, target_source_key
from ..targets.collator import DataCollatorForClassPairs
from ..targets.pairing import ClassPairedDataset
from . import checkpoints
from .cskd_config import CSKDConfig, cskd_settings
from .zero3 import calibrate_zero3

logger = logging.get_logger(__name__)


class CSKDTrainer(Trainer):
    """`Trainer` with Class-wise Self-Knowledge Distillation (Yun et al., CVPR 2020): same constructor, data and
    checkpoints. A training step's loss is `CE + cskd_lambda · class_wise_kd_loss(f(x), target)`, the target a
    prediction for another example of `x`'s class (`hf_cskd.targets`: the paper's pairs, or a queue), plus a frozen
    `teacher_model=`'s term and Mixup/CutMix when asked; with none active it is plain `Trainer`, bit for bit.
    `args` may be any `TrainingArguments` (the CS-KD defaults apply); a `compute_loss_func` of yours takes the
    cross-entropy's place."""

    def __init__(self, model: nn.Module | None = None, args: TrainingArguments | None = None, *pos: Any,
                 teacher_model: nn.Module | None = None, **kw: Any):  # fmt: skip
        super().__init__(model, args if args is not None else CSKDConfig(output_dir="trainer_output"), *pos, **kw)
        check_single_label_classifier(self.accelerator.unwrap_model(self.model))
        self.teacher_model: nn.Module | None = None  # frozen; never a submodule of the model (never saved, pushed)
        if teacher_model is not None:
            check_same_label_space(self.accelerator.unwrap_model(self.model), teacher_model)
            self.teacher_model = freeze_teacher(teacher_model, self.args.device)
            if self.is_deepspeed_enabled:  # sharded (ZeRO-3) and in the student's precision, like the student
                self.teacher_model = deepspeed_teacher(self.teacher_model,
                                                       self.accelerator.state.deepspeed_plugin.deepspeed_config,
                                                       self.accelerator.mixed_precision)  # fmt: skip
            elif self._fsdp_version() == 2:  # sharded like the student, in its mixed precision
                self.teacher_model = fsdp2_teacher(self.teacher_model, self.accelerator)
        self.add_callback(EpochCallback)
        if not isinstance(self.data_collator, DataCollatorForClassPairs):
            self.data_collator = DataCollatorForClassPairs(self.data_collator)
        self.cskd_loss = CSKDLoss(base=self.compute_loss_func)  # the user's own loss function, if any
        self._mixer = BatchMixer()
        self.cskd_targets: TargetSource | None = None
        self._targets_key: tuple | None = None  # the settings `cskd_targets` was built for
        self._raw_train_dataset = self._prepared_train_dataset = None
        self._prepare_train_dataset()  # now, so that bad labels fail here rather than after the first steps
        self.calibration: dict[str, Any] | None = None  # set by `calibrate()`

    @property
    def cskd(self) -> Any:
        """The CS-KD knobs of `self.args` (`cskd_temperature`, `cskd_lambda`, `cskd_mode`, ...)."""
        return cskd_settings(self.args)

    @property
    def _data_seed(self) -> int:
        """The seed of the data order, which the pairs, the queue's draws and the mixing follow too."""
        return self.args.data_seed if self.args.data_seed is not None else self.args.seed

    def _prepare_train_dataset(self) -> None:
        """Build the target source and the loss for the arguments as they are now, and wrap the training set: at
        `__init__`, and when `train()` asks for its data loader, after a search trial (or the user) set the arguments
        (λ from 0 to 1, another `cskd_mode`) or assigned another training set."""
        if self.model is None:  # between search trials; `train()` asks again once `model_init` made one
            return
        if self.train_dataset is not self._prepared_train_dataset:  # new data (or the first call)
            self._raw_train_dataset, self._targets_key = self.train_dataset, None
        num_labels = getattr(getattr(self.accelerator.unwrap_model(self.model), "config", None), "num_labels", None)
        if isinstance(self.data_collator, DataCollatorForClassPairs):  # it checks labels on the host
            self.data_collator.num_labels = num_labels
        key = target_source_key(self.cskd, num_labels, self._data_seed, self.accelerator)
        if key != self._targets_key:
            self._targets_key, self._signature_columns = key, None  # the kept columns depend on the source
            dataset = self._raw_train_dataset
            self.cskd_targets = make_target_source(self.cskd, dataset, num_labels, self._data_seed, self.accelerator)
            if self.cskd_targets is not None:
                dataset = self.cskd_targets.prepare_dataset(dataset)
            self.train_dataset = self._prepared_train_dataset = self._transform_safe(dataset, "train")
        if self.compute_loss_func is not self.cskd_loss:  # a function set after __init__ is the user's too
            self.cskd_loss.base = self.compute_loss_func
        mixing = self.cskd_loss.check_mixing(self.cskd)
        extra = self.cskd_targets is not None or self._teacher() is not None or mixing
        # Trainer reads `compute_loss_func` to count `num_items_in_batch` and to leave the loss unscaled for GA.
        self.compute_loss_func = self.cskd_loss if extra else self.cskd_loss.base
        self.cskd_loss.label_smoothing = self.args.label_smoothing_factor

    def _transform_safe(self, dataset: Any, split: str) -> Any:
        """Rows whose on-the-fly transform still finds its columns under `remove_unused_columns` (`transformed_rows`)."""
        return transformed_rows(dataset, split) if self.args.remove_unused_columns else dataset

    def get_eval_dataloader(self, eval_dataset: Any = None) -> torch.utils.data.DataLoader:
        if eval_dataset is None and not isinstance(self.eval_dataset, dict):
            eval_dataset = self.eval_dataset
        if eval_dataset is not None and not isinstance(eval_dataset, str):
            eval_dataset = self._transform_safe(eval_dataset, "evaluation")
        return super().get_eval_dataloader(eval_dataset)

    def get_test_dataloader(self, test_dataset: Any) -> torch.utils.data.DataLoader:
        return super().get_test_dataloader(self._transform_safe(test_dataset, "test"))

    def get_train_dataloader(self) -> torch.utils.data.DataLoader:
        self._prepare_train_dataset()  # also when the dataset was set after __init__
        return super().get_train_dataloader()

    def _get_train_sampler(self, train_dataset: Any = None) -> torch.utils.data.Sampler | None:
        dataset = train_dataset if train_dataset is not None else self.train_dataset
        if isinstance(dataset, ClassPairedDataset | NamedRows):  # ExampleIdDataset, transformed rows
            dataset = dataset.dataset
        return super()._get_train_sampler(dataset)

    def _set_signature_columns_if_needed(self) -> None:
        if self._signature_columns is None:
            super()._set_signature_columns_if_needed()
            if self.cskd_targets is not None:
                self._signature_columns += self.cskd_targets.input_names(self._signature_columns)

    def _unwrapped_teacher(self) -> nn.Module | None:
        return None if self.teacher_model is None else self.accelerator.unwrap_model(self.teacher_model)

    def _teacher(self) -> nn.Module | None:
        return self.teacher_model if self.cskd.teacher_kd_weight > 0 else None

    def compute_loss(self, model: nn.Module, inputs: dict[str, Any], return_outputs: bool = False,
                     num_items_in_batch: Any = None) -> torch.Tensor | tuple[torch.Tensor, Any]:  # fmt: skip
        """`Trainer.compute_loss`; in training with an extra term, the step's terms are prepared for `CSKDLoss`
        first (the source's inputs leave the batch, the images are mixed), which `Trainer` then calls."""
        if model.training and self.compute_loss_func is self.cskd_loss:
            self.cskd_loss.step = self._step_terms(model, inputs)
        loss, outputs = super().compute_loss(model, inputs, True, num_items_in_batch)
        return (loss, loss_first(loss, outputs)) if return_outputs else loss

    def _step_terms(self, model: nn.Module, inputs: dict[str, Any]) -> StepTerms:
        settings, source, teacher = self.cskd, self.cskd_targets, self._teacher()
        extras = source.pop_inputs(inputs) if source is not None else {}
        mix = self._mixer(inputs, inputs.get("labels"), settings, self._data_seed, self.state.global_step,
                          self.accelerator.process_index, isinstance(source, QueueTargets),
                          self.args.gradient_accumulation_steps)  # fmt: skip
        targets = None if source is None else partial(source.targets, model, extras)
        # The teacher sees the batch as the model does (mixed), under the student's mixed precision.
        teacher = None if teacher is None else partial(teacher_logits, teacher, dict(inputs), self.accelerator.autocast)
        return StepTerms(settings, mix, targets, teacher, self.current_gradient_accumulation_steps)

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        """Add `ce_loss`, `cskd_loss` / `teacher_kd_loss` (before their weights) and the source's statistics."""
        if "loss" in logs and self.cskd_loss.logs.micro_steps:
            logs.update(self.cskd_loss.logs.pop(lambda t, how: self.accelerator.reduce(t, how)))
        super().log(logs, start_time)

    def train(self, resume_from_checkpoint: str | bool | None = None, trial: Any = None, **kwargs: Any) -> Any:
        """`Trainer.train`, afresh (empty queue) or from the last *complete* checkpoint with `True` (one whose
        `trainer_state.json`, written last, reads back: others are skipped with a warning, a path to one refused)."""
        resume_from_checkpoint = checkpoints.complete_checkpoint(resume_from_checkpoint, self.args.output_dir)
        self._prepare_train_dataset()  # the arguments may have changed since __init__ (a trial's change again later)
        self.cskd_loss.logs.__init__()  # each run (and search trial) starts with none of the last one's state
        self._mixer = BatchMixer()
        if self.cskd_targets is not None:  # an empty queue, or the checkpoint's
            resuming = isinstance(resume_from_checkpoint, str)
            self.cskd_targets.start(checkpoints.load_targets(resume_from_checkpoint) if resuming else None)
        output = super().train(resume_from_checkpoint=resume_from_checkpoint, trial=trial, **kwargs)
        if self.args.load_best_model_at_end and self.state.best_model_checkpoint:
            self._reload_renamed_weights(self.model, self.state.best_model_checkpoint)
        return output

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model: nn.Module | None = None) -> None:
        target = model if model is not None else self.model
        with checkpoints.quiet_key_report(target, resume_from_checkpoint):
            super()._load_from_checkpoint(resume_from_checkpoint, model)
        self._reload_renamed_weights(target, resume_from_checkpoint)

    def _reload_renamed_weights(self, model: nn.Module, folder: str) -> None:
        if not (self.is_fsdp_enabled or self.is_deepspeed_enabled):  # their engines load their own shards
            checkpoints.reload_renamed_weights(model, folder)

    def _save_rng_state(self, output_dir: str) -> None:
        super()._save_rng_state(output_dir)  # creates output_dir on every process
        if self.args.should_save and self.cskd_targets is not None:
            checkpoints.save_targets(self.cskd_targets.state_dict(), output_dir)

    def save_model(self, output_dir: str | None = None, _internal_call: bool = False) -> None:
        """`Trainer.save_model`, plus the training arguments as JSON and the calibration record, if any."""
        super().save_model(output_dir, _internal_call)
        output_dir = output_dir if output_dir is not None else self.args.output_dir
        if self.args.should_save and os.path.isdir(output_dir):
            checkpoints.save_run_records(self.args, self.calibration, output_dir)

    def calibrate(self, eval_dataset: Any = None, split_name: str = "validation", bake_on_bound: bool = False,
                  bootstrap_resamples: int = BOOTSTRAP_RESAMPLES) -> float:  # fmt: skip
        """Fit T on held-out data (never the test split), bake it into the head and return it. When T is not baked
        (`calibration.temperature.calibrate_model` says when) the model stays as trained, `self.calibration` records
        why (for `calibration.json` and the card), and the error says what to do. `bootstrap_resamples` sets the
        recorded metrics' 95 % intervals (0: none, faster)."""
        # FSDP2 shards are DTensors: every process divides its shard of the head by the same T (fitted on the same
        # gathered logits) and takes part in the checking forward; ZeRO-1/2 leave every process the whole model, as
        # DDP. ZeRO-3 partitions cannot be edited in place: `zero3.calibrate_zero3` bakes a gathered copy and writes
        # its head back. FSDP1's flat parameters: not supported (it cannot run on CPU, so this is untested).
        if self._fsdp_version() == 1:
            raise ValueError("calibrate() is not supported under FSDP1 (fsdp_version 1): use FSDP2 (fsdp_version: 2) "
                             "or train with --no_calibrate, then `hf-cskd calibrate OUTPUT_DIR --validation_dir DIR` "
                             "calibrates the saved checkpoint in one process.")  # fmt: skip
        zero3 = self.is_deepspeed_enabled and self._deepspeed_stage() == 3
        dataset = eval_dataset if eval_dataset is not None else self.eval_dataset
        if dataset is None:
            raise ValueError("calibrate() needs held-out data: pass `eval_dataset` or give the trainer one.")
        was_training = self.model.training  # `predict` leaves the model in eval mode
        try:
            prediction = self.predict(dataset, metric_key_prefix="calibration")
            batch = self._prepare_inputs(next(iter(self.get_eval_dataloader(dataset))))
            inputs = {k: v for k, v in batch.items() if k not in self.label_names and k != "labels"}
            logits = prediction.predictions[0] if isinstance(prediction.predictions, tuple) else prediction.predictions
            fit = (partial(calibrate_zero3, self.accelerator, self.model_wrapped) if zero3 else
                   partial(calibrate_model, self.accelerator.unwrap_model(self.model)))  # fmt: skip
            self.calibration, error = fit(logits, prediction.label_ids, inputs, split_name, bake_on_bound,
                                          bootstrap_resamples)
        finally:
            self.model.train(was_training)
        if error is not None:
            raise error
        logger.info(f"Temperature scaling: T = {self.calibration['temperature']:.4f} (fitted on {split_name}).")
        return self.calibration["temperature"]

    def _fsdp_version(self) -> int | None:
        """1 or 2 under FSDP, else None."""
        return getattr(self.accelerator.state.fsdp_plugin, "fsdp_version", 1) if self.is_fsdp_enabled else None

    def _deepspeed_stage(self) -> int:
        """The ZeRO stage (0-3) of a DeepSpeed run: only ZeRO-3 partitions the parameters calibration edits."""
        return self.accelerator.state.deepspeed_plugin.deepspeed_config.get("zero_optimization", {}).get("stage", 0)

    def create_model_card(self, **kwargs: Any) -> None:
        """Write the CS-KD card (`README.md`) to `output_dir`; takes `hub.model_card.training_card`'s arguments."""
        if self.is_world_process_zero():
            training_card(self.accelerator.unwrap_model(self.model), self.args, self.cskd, self.state.log_history,
                          calibration=self.calibration, repo_id=self.hub_model_id if self.args.push_to_hub else None,
                          teacher_model=self._unwrapped_teacher(), **kwargs).save(os.path.join(self.args.output_dir, "README.md"))  # fmt: skip

    def init_hf_repo(self, token: str | None = None, private: bool | None = None) -> None:
        """`Trainer.init_hf_repo`; refusals say what to do; a `.gitignore` keeps `training_args.bin` off the Hub."""
        with explained_refusals(self.args.hub_model_id or self.args.output_dir):
            super().init_hf_repo(token=token, private=private)
        if self.is_world_process_zero():
            write_hub_gitignore(self.args.output_dir)

    def push_to_hub(self, commit_message: str | None = "End of training", blocking: bool = True, **kwargs: Any) -> Any:
        """`Trainer.push_to_hub` with the CS-KD card; refusals and uploads that fail for good become errors that say
        what to do and whether anything reached the Hub (`hub.push.upload_or_explain`)."""
        token, revision = kwargs.get("token"), kwargs.get("revision")
        if self.hub_model_id is None:
            self.init_hf_repo(token=token, private=kwargs.get("private"))
        upload = lambda: super(CSKDTrainer, self).push_to_hub(commit_message, blocking, **kwargs)  # noqa: E731
        if not blocking or not self.is_world_process_zero():
            return upload()
        return upload_or_explain(upload, None, self.hub_model_id, revision or self.args.hub_revision,
                                 token=token if token is not None else self.args.hub_token)  # fmt: skip
