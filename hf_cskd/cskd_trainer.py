"""`CSKDTrainer`: a `Trainer` that adds the class-wise self-knowledge-distillation term.

It extends `Trainer` through the hooks TRL's trainers use (`compute_loss`, `log`, `train`,
`get_train_dataloader`, `get_eval_dataloader`, `get_test_dataloader`, `save_model`, `create_model_card`,
`push_to_hub`, `init_hf_repo`) and keeps
`Trainer`'s own checkpoint format, so plain `Trainer` resumes a `CSKDTrainer` checkpoint and the
reverse. The private `Trainer` methods it overrides, each a small addition around `super()`:

| method | why | known to work with transformers |
|---|---|---|
| `_set_signature_columns_if_needed` | keep the target source's columns (pairs, example ids) when `remove_unused_columns=True` | 5.18 - 5.24 |
| `_get_train_sampler` | sample the wrapped training set as the dataset it wraps (same indices; `group_by_length` reads its length column) | 5.18 - 5.24 |
| `_save_rng_state` | write the queue (`cskd_targets.safetensors`) into the checkpoint before `trainer_state.json` marks it complete | 5.18 - 5.24 |
| `_load_from_checkpoint` | `Trainer` resumes some models (ViT) with stale weights: reload them by name (`checkpoints.reload_renamed_weights`), without Trainer's report on those keys | 5.18 - 5.24 |
"""

import json
import os
from typing import Any

import torch
from huggingface_hub import HfApi
from huggingface_hub.errors import HfHubHTTPError
from torch import nn
from transformers import Trainer, TrainingArguments
from transformers.utils import logging

from .checkpoints import complete_checkpoint, load_targets, quiet_key_report, reload_renamed_weights, save_targets
from .collator import DataCollatorForClassPairs
from .cskd_config import CSKDConfig, cskd_settings
from .data_errors import NamedRows, transformed_rows
from .grad_accumulation import add_loss_terms, kd_denominator, loss_is_scaled_for_ga, normalizes_by_count
from .hub import hub_permission_error, upload_or_explain, write_hub_gitignore
from .loss_logs import LossTermSums
from .losses import class_wise_kd_loss
from .mixing import BatchMixer, mixed_label_loss, mixed_target_logits
from .model_card import training_card
from .model_outputs import check_single_label_classifier, loss_first, model_logits
from .pairing import ClassPairedDataset
from .targets import (
    HAS_TARGET,
    EpochCallback,
    QueueTargets,
    TargetSource,
    make_target_source,
    target_source_key,
)
from .teacher import check_same_label_space, freeze_teacher, teacher_logits
from .temperature_scaling import (
    CalibrationNotApplied,
    TemperatureOnBoundError,
    bake_temperature,
    fitted_calibration,
    not_baked,
)

logger = logging.get_logger(__name__)


class CSKDTrainer(Trainer):
    """`Trainer` with Class-wise Self-Knowledge Distillation (Yun et al., CVPR 2020).

    A drop-in replacement: same constructor, same data, same checkpoints. Each step adds
    `cskd_lambda · class_wise_kd_loss(f(x), target)` to the model's own loss, where the target is
    a prediction for another example of `x`'s class: from a second forward of the same model in
    train mode, without gradient (`cskd_mode="pairs"`, the paper's: the training set is wrapped in
    a `ClassPairedDataset`), or drawn from a queue of recent predictions (`"queue"`). The target
    source (`targets.py`) prepares the data; the collator is wrapped in a `DataCollatorForClassPairs`.
    Evaluation and prediction are plain `Trainer`.

    Two of the paper's combinations are built in: `teacher_model=` adds Hinton's distillation from a
    frozen teacher (`teacher.py`, weight `teacher_kd_weight`), and `mixup_alpha` / `cutmix_alpha` mix
    the training images, their labels and their CS-KD targets with one λ per batch (`mixing.py`).

    `args` may be a `CSKDConfig` or any `TrainingArguments` (kept as given; the CS-KD defaults apply).
    """

    def __init__(
        self,
        model: nn.Module | None = None,
        args: TrainingArguments | None = None,
        *pos: Any,
        teacher_model: nn.Module | None = None,
        **kw: Any,
    ):
        super().__init__(model, args if args is not None else CSKDConfig(output_dir="trainer_output"), *pos, **kw)
        check_single_label_classifier(self.accelerator.unwrap_model(self.model))
        self.teacher_model: nn.Module | None = None  # frozen; never a submodule of the model (never saved, pushed)
        if teacher_model is not None:
            check_same_label_space(self.accelerator.unwrap_model(self.model), teacher_model)
            self.teacher_model = freeze_teacher(teacher_model, self.args.device)
        self.add_callback(EpochCallback)
        if not isinstance(self.data_collator, DataCollatorForClassPairs):
            self.data_collator = DataCollatorForClassPairs(self.data_collator)
        self.cskd_targets: TargetSource | None = None
        self._targets_key: tuple | None = None  # the settings `cskd_targets` was built for
        self._raw_train_dataset = self._prepared_train_dataset = None
        self._prepare_train_dataset()  # now, so that bad labels fail here rather than after the first steps
        self._start_run()
        self.calibration: dict[str, Any] | None = None  # set by `calibrate()`

    @property
    def cskd(self) -> Any:
        """The CS-KD knobs of `self.args` (`cskd_temperature`, `cskd_lambda`, `cskd_mode`, ...)."""
        return cskd_settings(self.args)

    @property
    def _data_seed(self) -> int:
        """The seed of the data order, which the pairs, the queue's draws and the mixing follow too."""
        return self.args.data_seed if self.args.data_seed is not None else self.args.seed

    def _start_run(self) -> None:
        """State of one training run: each `train()` call (and search trial) starts with none of the last one's."""
        if self.cskd_targets is not None:
            self.cskd_targets.reset()
        self._cskd_sums = LossTermSums()
        self._mixer = BatchMixer()
        self._normalizes_by_count: bool | None = None  # found out at a training step

    # ---- data -------------------------------------------------------------------------------

    def _prepare_train_dataset(self) -> None:
        """Build the target source for the arguments as they are now, and wrap the training set for it.

        Called at `__init__` and again when `train()` asks for its data loader, after a hyperparameter-search trial
        (or the user) set the arguments: a trial that turns λ from 0 to 1 or switches `cskd_mode` gets its own
        source, data wrapping and collator columns. A training set assigned after `__init__` is wrapped too."""
        if self.model is None:  # between search trials; `train()` asks again once `model_init` made one
            return
        if self.train_dataset is not self._prepared_train_dataset:  # new data (or the first call)
            self._raw_train_dataset, self._targets_key = self.train_dataset, None
        model = self.accelerator.unwrap_model(self.model)
        num_labels = getattr(getattr(model, "config", None), "num_labels", None)
        if isinstance(self.data_collator, DataCollatorForClassPairs):  # it checks labels on the host
            self.data_collator.num_labels = num_labels
        key = target_source_key(self.cskd, num_labels, self._data_seed, self.accelerator)
        if key != self._targets_key:
            self._targets_key, self._signature_columns = key, None  # the kept columns depend on the source
            dataset = self._raw_train_dataset
            self.cskd_targets = make_target_source(self.cskd, dataset, num_labels, self._data_seed, self.accelerator)
            if self.cskd_targets is not None:
                dataset = self.cskd_targets.prepare_dataset(dataset)
            self.train_dataset = self._transform_safe(dataset, "train")
            self._prepared_train_dataset = self.train_dataset

    def _transform_safe(self, dataset: Any, split: str) -> Any:
        """`remove_unused_columns=True` drops a `datasets.Dataset`'s columns before its on-the-fly transform
        (`with_transform`) reads them (`KeyError: 'image'`); as rows (`NamedRows`), `Trainer` drops the unused
        keys after the transform instead."""
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

    # ---- loss -------------------------------------------------------------------------------

    def compute_loss(
        self,
        model: nn.Module,
        inputs: dict[str, Any],
        return_outputs: bool = False,
        num_items_in_batch: torch.Tensor | int | None = None,
    ) -> torch.Tensor | tuple[torch.Tensor, Any]:
        extras = self.cskd_targets.pop_inputs(inputs) if self.cskd_targets is not None else {}
        teacher = self.teacher_model if self.cskd.teacher_kd_weight > 0 else None
        labels = inputs.get("labels")  # before Trainer pops it for label smoothing
        mix = None  # the model and the teacher see the batch mixed
        if model.training:
            mix = self._mixer(inputs, labels, self.cskd, self._data_seed, self.state.global_step,
                              self.accelerator.process_index, isinstance(self.cskd_targets, QueueTargets),
                              self.args.gradient_accumulation_steps)  # fmt: skip
        if (self.cskd_targets is None and teacher is None and mix is None) or not model.training:
            if not return_outputs:
                return super().compute_loss(model, inputs, False, num_items_in_batch)
            loss, outputs = super().compute_loss(model, inputs, True, num_items_in_batch)
            return loss, loss_first(loss, outputs)

        model_inputs = dict(inputs)
        loss, outputs = super().compute_loss(model, inputs, return_outputs=True, num_items_in_batch=num_items_in_batch)
        logits = model_logits(outputs)
        scaled = loss_is_scaled_for_ga(
            getattr(self, "loss_is_scaled_for_ga", None),  # from transformers 5.19
            self.model_accepts_loss_kwargs, num_items_in_batch, self.compute_loss_func is not None,
        )  # fmt: skip
        by_count = scaled and self._model_normalizes_by_count(loss, logits, labels, num_items_in_batch)
        steps = self.current_gradient_accumulation_steps
        denominator = kd_denominator(logits.shape[0], num_items_in_batch, scaled, by_count, steps, self._loss_scale())
        if mix is not None:  # the model's loss is its own label's share; add the partner's, normalized alike
            loss = mixed_label_loss(loss, logits, labels, mix, denominator, self.args.label_smoothing_factor)
        sums, stats = {}, {}  # each extra term: (its weight, its value summed over the batch)
        if self.cskd_targets is not None:
            own_example = None if mix is None else mix.unmixed(logits.device)  # only those may enter a queue
            targets, stats = self.cskd_targets.targets(model, extras, logits, labels, own_example)
            if mix is not None:  # the λ-mix of the two classes' targets (hf_cskd.mixing)
                targets = mixed_target_logits(targets, mix, self.cskd.cskd_temperature, stats.get(HAS_TARGET))
            kd = class_wise_kd_loss(logits, targets, self.cskd.cskd_temperature, reduction="sum")
            sums["cskd_loss"] = (self.cskd.cskd_lambda, kd)
        if teacher is not None:
            with self.accelerator.autocast():  # the student's mixed precision
                target = teacher_logits(teacher, model_inputs)
            kd = class_wise_kd_loss(logits, target, self.cskd.teacher_kd_temperature, reduction="sum")
            sums["teacher_kd_loss"] = (self.cskd.teacher_kd_weight, kd)
        loss, terms = add_loss_terms(loss, sums, denominator, scaled, steps)
        self._cskd_sums.add(self.state.global_step, terms, stats)
        return (loss, loss_first(loss, outputs)) if return_outputs else loss

    def _loss_scale(self) -> int:
        """What `Trainer.compute_loss` multiplies the loss by under `average_tokens_across_devices`."""
        if not self.args.average_tokens_across_devices:
            return 1
        return self.accelerator.num_processes // self.get_tp_size() if self.args.n_gpu <= 1 else self.args.n_gpu

    def _model_normalizes_by_count(self, loss: torch.Tensor, logits: torch.Tensor, labels: Any, count: Any) -> bool:
        """Whether the model's loss honours `num_items_in_batch` (`grad_accumulation.normalizes_by_count`), found
        out once, at the first step where the two normalizations differ; True where `Trainer` computes the loss."""
        from_model = self.label_smoother is None and self.compute_loss_func is None and self.model_accepts_loss_kwargs
        if self._normalizes_by_count is not None or count is None:
            return self._normalizes_by_count is not False
        if not from_model or labels is None or labels.ndim != 1 or labels.is_floating_point():
            return True
        if self.current_gradient_accumulation_steps == 1 and self._loss_scale() == 1:
            return True  # the count is this micro-batch's: both normalizations agree (and no sync is needed)
        self._normalizes_by_count = normalizes_by_count(loss, logits, labels, count, self._loss_scale())
        if self._normalizes_by_count is False:
            logger.warning(
                f"{type(self.accelerator.unwrap_model(self.model)).__name__}'s loss ignores `num_items_in_batch` (a "
                "per-micro-batch mean), so Trainer sums it over the gradient-accumulation steps. The CS-KD term is "
                "normalized the same way, so λ weighs it against the cross-entropy as without accumulation."
            )
        return self._normalizes_by_count is not False

    # ---- logs -------------------------------------------------------------------------------

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        """Add `ce_loss`, `cskd_loss` (before λ) and the source's statistics (`loss_logs.LossTermSums`)."""
        if "loss" in logs and self._cskd_sums.sums:
            logs.update(self._cskd_sums.pop(self.state.global_step, lambda t: self.accelerator.reduce(t, "mean")))
        super().log(logs, start_time)

    # ---- training runs and checkpoints ---------------------------------------------------------

    def train(self, resume_from_checkpoint: str | bool | None = None, trial: Any = None, **kwargs: Any) -> Any:
        """`Trainer.train`, starting afresh (empty queue), or from the last *complete* checkpoint with `True`.

        A run killed while saving leaves a checkpoint without (or with a truncated) `trainer_state.json`,
        which `Trainer` writes last: such folders are skipped with a warning (a path to one is refused).
        """
        resume_from_checkpoint = complete_checkpoint(resume_from_checkpoint, self.args.output_dir)
        self._prepare_train_dataset()  # the arguments may have changed since __init__ (a trial's change again later)
        self._start_run()
        if isinstance(resume_from_checkpoint, str) and self.cskd_targets and self.cskd_targets.state_dict():
            state = load_targets(resume_from_checkpoint)
            if state is not None:
                self.cskd_targets.load_state_dict(state)
        output = super().train(resume_from_checkpoint=resume_from_checkpoint, trial=trial, **kwargs)
        if self.args.load_best_model_at_end and self.state.best_model_checkpoint:
            self._reload_renamed_weights(self.model, self.state.best_model_checkpoint)
        return output

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model: nn.Module | None = None) -> None:
        target = model if model is not None else self.model
        with quiet_key_report(target, resume_from_checkpoint):
            super()._load_from_checkpoint(resume_from_checkpoint, model)
        self._reload_renamed_weights(target, resume_from_checkpoint)

    def _reload_renamed_weights(self, model: nn.Module, folder: str) -> None:
        if not (self.is_fsdp_enabled or self.is_deepspeed_enabled):  # their engines load their own shards
            reload_renamed_weights(model, folder)

    def _save_rng_state(self, output_dir: str) -> None:
        super()._save_rng_state(output_dir)  # creates output_dir on every process
        if self.args.should_save and self.cskd_targets is not None:
            save_targets(self.cskd_targets.state_dict(), output_dir)

    def save_model(self, output_dir: str | None = None, _internal_call: bool = False) -> None:
        """`Trainer.save_model`, plus the training arguments as JSON and the calibration record, if any."""
        super().save_model(output_dir, _internal_call)
        output_dir = output_dir if output_dir is not None else self.args.output_dir
        if self.args.should_save and os.path.isdir(output_dir):
            with open(os.path.join(output_dir, "training_args.json"), "w") as file:
                file.write(self.args.to_json_string())  # tokens masked
            if self.calibration is not None:
                with open(os.path.join(output_dir, "calibration.json"), "w") as file:
                    json.dump(self.calibration, file, indent=2)

    # ---- calibration and model card -----------------------------------------------------------

    def calibrate(self, eval_dataset: Any = None, split_name: str = "validation", bake_on_bound: bool = False) -> float:
        """Fit a temperature on held-out data (never the test split) and bake it into the head (logits / T: same
        predictions, calibrated probabilities, for any later use of the model). Returns T. A temperature on a bound
        of the search cannot be trusted: unless `bake_on_bound`, the model is left as trained, `self.calibration`
        records why (for `calibration.json` and the card), and `TemperatureOnBoundError` says so with the fix. So
        does `CalibrationNotApplied` when the head cannot absorb T (no linear head with `num_labels` outputs, or one
        whose logits do not scale): divide the logits by the recorded `fitted_temperature` at inference then."""
        if self.is_fsdp_enabled or self.is_deepspeed_enabled:
            raise ValueError(
                "calibrate() changes the classification head in place, which sharded (FSDP/DeepSpeed) models do not "
                "allow. Save the model, then calibrate the saved checkpoint in a single process."
            )
        dataset = eval_dataset if eval_dataset is not None else self.eval_dataset
        if dataset is None:
            raise ValueError("calibrate() needs held-out data: pass `eval_dataset` or give the trainer one.")
        was_training = self.model.training  # `predict` leaves the model in eval mode
        try:
            prediction = self.predict(dataset, metric_key_prefix="calibration")
            logits = prediction.predictions[0] if isinstance(prediction.predictions, tuple) else prediction.predictions
            record = fitted_calibration(logits, prediction.label_ids, split_name)
            temperature = record["temperature"]
            if "warning" in record and not bake_on_bound:  # recorded for calibration.json and the card
                self.calibration = not_baked(record, record["warning"])
                raise TemperatureOnBoundError(f"{record['warning']} The model was left uncalibrated (bake_on_bound=True "
                                              "bakes it).")  # fmt: skip
            batch = self._prepare_inputs(next(iter(self.get_eval_dataloader(dataset))))
            example_inputs = {k: v for k, v in batch.items() if k not in self.label_names and k != "labels"}
            try:
                bake_temperature(self.accelerator.unwrap_model(self.model), temperature, example_inputs)
            except Exception as error:  # the model is unchanged (bake_temperature restores it): never claim T
                reason = f"T = {temperature:.4f} was fitted but not baked into the model: {error}"
                self.calibration = not_baked(record, reason)
                if isinstance(error, ValueError):
                    raise CalibrationNotApplied(reason) from error
                raise
            self.calibration = record  # only now: the weights hold T
        finally:
            self.model.train(was_training)
        logger.info(f"Temperature scaling: T = {temperature:.4f} (fitted on {split_name}).")
        return temperature

    def create_model_card(self, **kwargs: Any) -> None:
        """Write the CS-KD model card (`README.md`) to `output_dir`, as `push_to_hub` expects.

        Takes `Trainer.create_model_card`'s arguments (`tasks` sets the card's task, else the model class
        does) and those of `model_card.training_card` (`results`, `eval_split`, `reliability_diagram`,
        `num_bins`); results default to the latest evaluation. Extra arguments of `push_to_hub` arrive here.
        """
        if not self.is_world_process_zero():
            return
        card = training_card(
            self.accelerator.unwrap_model(self.model), self.args, self.cskd, self.state.log_history,
            calibration=self.calibration, repo_id=self.hub_model_id if self.args.push_to_hub else None,
            teacher_model=self.teacher_model, **kwargs,
        )  # fmt: skip
        card.save(os.path.join(self.args.output_dir, "README.md"))

    # ---- Hub -----------------------------------------------------------------------------------

    def init_hf_repo(self, token: str | None = None, private: bool | None = None) -> None:
        """`Trainer.init_hf_repo`; refusals say what to do, and the pushed folder gets a `.gitignore` that keeps
        the pickled `training_args.bin` off the Hub (`hub.write_hub_gitignore`)."""
        try:
            super().init_hf_repo(token=token, private=private)
        except HfHubHTTPError as error:
            raise hub_permission_error(error, self.args.hub_model_id or self.args.output_dir) from error
        if self.is_world_process_zero():
            write_hub_gitignore(self.args.output_dir)

    def push_to_hub(
        self,
        commit_message: str | None = "End of training",
        blocking: bool = True,
        token: str | None = None,
        revision: str | None = None,
        private: bool | None = None,
        **kwargs: Any,
    ) -> Any:
        """`Trainer.push_to_hub` with the CS-KD card; 401/403 and uploads that fail for good become errors that
        say what to do and whether anything reached the Hub (`hf_cskd.hub.upload_or_explain`)."""
        if self.hub_model_id is None:
            self.init_hf_repo(token=token, private=private)
        upload = lambda: super(CSKDTrainer, self).push_to_hub(  # noqa: E731
            commit_message=commit_message, blocking=blocking, token=token, revision=revision, private=private, **kwargs
        )
        if not blocking or not self.is_world_process_zero():
            return upload()
        api = HfApi(token=token if token is not None else self.args.hub_token)
        return upload_or_explain(upload, api, self.hub_model_id, revision or self.args.hub_revision)
