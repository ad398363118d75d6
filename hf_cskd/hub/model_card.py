"""The CS-KD model card: what was measured (before/after temperature scaling), for the model's task.

The card states measured effects only (how far the raw model's confidence was from its accuracy,
what temperature scaling changed); its task (image, text or audio classification) sets the
pipeline tag, the usage example and the limitations text.
"""

import os
from dataclasses import dataclass
from importlib import resources
from typing import Any

from huggingface_hub import EvalResult, ModelCard, ModelCardData
from huggingface_hub.errors import HFValidationError
from huggingface_hub.utils import validate_repo_id

from ..calibration.metrics import MCE_MIN_COUNT


def template_path(name: str = "cskd_model_card.md") -> str:
    """A template of `model_cards/` (the training card; `calibrated_model_card.md`: a checkpoint `hf-cskd calibrate`
    calibrated), shipped in the wheel as `hf_cskd.model_cards`."""
    return str(resources.files("hf_cskd.model_cards") / name)


@dataclass(frozen=True)
class TaskCard:
    """What the card says for one task."""

    name: str
    processor: str
    processor_variable: str
    auto_model: str
    process_call: str
    pipeline_input: str
    inputs: str


TASKS = {
    "image-classification": TaskCard(
        "Image Classification", "AutoImageProcessor", "processor", "AutoModelForImageClassification",
        'processor(images, return_tensors="pt")', '"path/or/url/to/image.png"', "images",
    ),
    "text-classification": TaskCard(
        "Text Classification", "AutoTokenizer", "tokenizer", "AutoModelForSequenceClassification",
        'tokenizer(texts, padding=True, truncation=True, return_tensors="pt")', '"A sentence to classify."', "texts",
    ),
    "audio-classification": TaskCard(
        "Audio Classification", "AutoFeatureExtractor", "feature_extractor", "AutoModelForAudioClassification",
        'feature_extractor(waveforms, sampling_rate=feature_extractor.sampling_rate, return_tensors="pt")',
        '"path/to/audio.wav"', "audio clips",
    ),
}  # fmt: skip
_TASK_BY_CLASS_SUFFIX = {
    "ForImageClassification": "image-classification",
    "ForSequenceClassification": "text-classification",
    "ForAudioClassification": "audio-classification",
}
_TASK_BY_INPUT = {
    "pixel_values": "image-classification",
    "input_ids": "text-classification",
    "input_values": "audio-classification",
    "input_features": "audio-classification",
}
# Metrics shown, in this order, when any result has them; the first four also go to the model-index.
METRICS = {"accuracy": "Accuracy", "ece": "ECE", "ace": "Adaptive ECE", "classwise_ece": "Classwise ECE",
           "smece": "Smooth ECE", "nll": "NLL", "loss": "Loss", "mce": "MCE", "brier": "Brier"}  # fmt: skip
MODEL_INDEX_METRICS = ("accuracy", "ece", "nll", "loss")
# Only these training arguments reach the card: a whitelist, so no token or path can leak.
CARD_HYPERPARAMETERS = (
    "learning_rate",
    "per_device_train_batch_size",
    "gradient_accumulation_steps",
    "num_train_epochs",
    "max_steps",
    "lr_scheduler_type",
    "warmup_steps",
    "weight_decay",
    "optim",
    "label_smoothing_factor",
    "seed",
    "fp16",
    "bf16",
)
WELL_CALIBRATED_GAP = 0.01  # |mean confidence - accuracy| under which the card says "well calibrated"


def latest_eval_metrics(log_history: list[dict[str, float]]) -> dict[str, float]:
    """The card's metrics of the latest evaluation in a `Trainer` log history (at least accuracy or loss)."""
    for log in reversed(log_history):
        metrics = {k[len("eval_") :]: v for k, v in log.items() if k.startswith("eval_")}
        if {"accuracy", "loss"} & set(metrics):
            return {k: v for k, v in metrics.items() if k in METRICS or k == "confidence"}
    return {}


def task_of(model: Any, tasks: str | list[str] | None = None) -> str:
    """The card's task: the `tasks` argument if given, else from the model's main input, else its class.

    The main input comes first: audio classifiers are often `...ForSequenceClassification`
    (e.g. `Wav2Vec2ForSequenceClassification`) but take `input_values`.
    """
    if tasks:
        task = tasks if isinstance(tasks, str) else tasks[0]
        if task not in TASKS:
            raise ValueError(f"The CS-KD card supports the tasks {list(TASKS)}, got {task!r}.")
        return task
    task = _TASK_BY_INPUT.get(getattr(model, "main_input_name", ""))
    name = type(model).__name__
    suffix = next((task for suffix, task in _TASK_BY_CLASS_SUFFIX.items() if name.endswith(suffix)), None)
    return task or suffix or "image-classification"


def hub_id(name: str | None) -> str | None:
    """`name` if it is a Hub repo id, `None` for local paths and free-form names."""
    if not name or os.path.exists(name) or name.startswith(("/", ".", "~")) or name.count("/") > 1:
        return None
    try:
        validate_repo_id(name)
    except HFValidationError:
        return None
    return name


def card_hyperparameters(training_args: Any) -> dict[str, Any]:
    """The whitelisted training arguments, as the user gave them (a fractional warm-up is a ratio)."""
    values = {key: getattr(training_args, key) for key in CARD_HYPERPARAMETERS if hasattr(training_args, key)}
    warmup = values.pop("warmup_steps", 0)
    values["warmup_ratio" if 0 < warmup < 1 else "warmup_steps"] = warmup
    values["world_size"] = getattr(training_args, "world_size", 1)
    return {key: getattr(value, "value", value) for key, value in values.items()}


def confidence_statement(metrics: dict[str, float]) -> str | None:
    """'over-confident: mean confidence 97.1% vs accuracy 93.0% (ECE 4.10%)', from measured metrics."""
    if not {"confidence", "accuracy"} <= set(metrics):
        return None
    gap = metrics["confidence"] - metrics["accuracy"]
    if abs(gap) < WELL_CALIBRATED_GAP:
        verdict = "well calibrated on average"
    else:
        verdict = "over-confident" if gap > 0 else "under-confident"
    ece = f" (ECE {100 * metrics['ece']:.2f}%)" if "ece" in metrics else ""
    return (
        f"{verdict}: mean confidence {100 * metrics['confidence']:.1f}% vs accuracy "
        f"{100 * metrics['accuracy']:.1f}%{ece}"
    )


PERCENT_METRICS = ("accuracy", "ece", "ace", "classwise_ece", "smece", "mce")


def metric_cell(metrics: dict[str, Any], key: str) -> str:
    """One metric as a card shows it: percent or 4 decimals, with its 95 % interval when there is one."""
    if key not in metrics:
        return "-"
    scale, form = (100, "{:.2f}") if key in PERCENT_METRICS else (1, "{:.4f}")
    text = form.format(scale * metrics[key]) + ("%" if scale == 100 else "")
    if f"{key}_ci" in metrics:
        low, high = (form.format(scale * value) for value in metrics[f"{key}_ci"])
        text += f" [{low}, {high}]"
    return text


def calibration_table(rows: dict[str, dict[str, Any]]) -> str:
    """A markdown table of calibration metrics, a row per label (e.g. "validation, before"), each cell with its
    95 % bootstrap interval when the record has one. Empty when no row has metrics."""
    columns = [key for key in METRICS if key != "loss" and any(key in metrics for metrics in rows.values())]
    if not columns:
        return ""
    lines = ["| | " + " | ".join(METRICS[key] for key in columns) + " |", "|---|" + "---|" * len(columns)]
    lines += [f"| {row} | " + " | ".join(metric_cell(m, key) for key in columns) + " |" for row, m in rows.items()]
    return "\n".join(lines)


def build_model_card(
    *,
    model_name: str,
    results: dict[str, dict[str, float]],
    dataset_name: str,
    eval_split: str,
    cskd: dict[str, Any],
    num_labels: int,
    task: str = "image-classification",
    hyperparameters: dict[str, Any] | None = None,
    dataset_id: str | None = None,
    base_model: str | None = None,
    calibration: dict[str, Any] | None = None,
    reliability_diagram: str | None = None,
    num_bins: int | None = None,
    repo_id: str | None = None,
    license: str | None = None,
    language: str | list[str] | None = None,
    tags: list[str] | None = None,
    library_name: str = "transformers",
    augmentation: dict[str, str] | None = None,
    head_note: str | None = None,
    teacher: dict[str, Any] | None = None,
    mixing: dict[str, float] | None = None,
) -> ModelCard:
    """Render the card.

    `results` maps a row label (e.g. "CS-KD + temperature scaling") to its metrics; `cskd` holds
    `lambda`, `temperature`, `mode` (and `queue_size`); `calibration` is `CSKDTrainer.calibration`
    (temperature, split, metrics before and after). Non-Hub dataset and base-model names are
    shown but never linked or put in the metadata. `library_name` "timm" adds timm's usage example;
    `augmentation` ("train"/"evaluation" -> one line each) and `head_note` (what was done to a
    pretrained head) are stated under the training procedure, as are `teacher` (`name`, `weight`, `temperature`)
    when a teacher's distillation term was part of the loss and `mixing` (`mixup_alpha`, `cutmix_alpha`,
    `switch_prob`, `prob`) when training batches were mixed.
    """
    task_card = TASKS[task]
    dataset_id, base_model = hub_id(dataset_id), hub_id(base_model)
    eval_results = [
        EvalResult(
            task_type=task,
            task_name=task_card.name,
            dataset_type=dataset_id or dataset_name,
            dataset_name=dataset_name,
            dataset_split=eval_split,
            metric_type=metric,
            metric_name=f"{METRICS[metric]} ({row})",
            metric_value=float(values[metric]),
        )
        for row, values in results.items()
        for metric in MODEL_INDEX_METRICS
        if metric in values and not (metric == "loss" and "nll" in values)
    ]
    columns = [metric for metric in METRICS if any(metric in values for values in results.values())]
    if "nll" in columns and "loss" in columns:  # the evaluation loss of a classifier is its NLL: shown once
        columns.remove("loss")
    card_data = ModelCardData(
        model_name=model_name,
        base_model=base_model,
        datasets=[dataset_id] if dataset_id else None,
        library_name=library_name,
        pipeline_tag=task,
        license=license,
        language=language,
        tags=sorted({task, "cs-kd", "hf-cskd", "calibration", library_name, *(tags or [])}),
        metrics=[metric for metric in MODEL_INDEX_METRICS if metric in columns] or None,
        eval_results=eval_results or None,
    )
    calibration = calibration or {}
    first_results = next(iter(results.values()), {})
    return ModelCard.from_template(
        card_data,
        template_path=template_path(),
        model_name=model_name,
        base_model=base_model,
        dataset_name=dataset_name,
        eval_split=eval_split,
        results=results,
        columns=[(metric, METRICS[metric]) for metric in columns],
        cskd=cskd,
        num_labels=num_labels,
        task=task_card,
        pipeline_task=task,
        hyperparameters=hyperparameters or {},
        calibration=calibration,
        calibration_table=calibration_table(
            {f"{calibration.get('split')}, {when}": calibration[when] for when in ("before", "after")
             if calibration.get(when) and any(key.endswith("_ci") for key in calibration[when])}
        ),  # fmt: skip
        raw_statement=confidence_statement(calibration.get("before", first_results)),
        raw_split=calibration.get("split", eval_split),
        reliability_diagram=reliability_diagram,
        num_bins=num_bins,
        mce_min_count=MCE_MIN_COUNT,
        repo_id=repo_id or f"path/to/{model_name}",
        library_name=library_name,
        augmentation=augmentation or {},
        head_note=head_note,
        teacher=teacher,
        mixing=mixing,
    )


def shown_name(name: str | None) -> str | None:
    """A model's name as a card may show it: a Hub id as it is, a local path as its folder's name only."""
    if not name:
        return None
    return hub_id(name) or os.path.basename(os.path.normpath(name))


def training_card(
    model: Any,
    args: Any,
    cskd: Any,
    log_history: list[dict[str, float]],
    calibration: dict[str, Any] | None = None,
    repo_id: str | None = None,
    language: str | list[str] | None = None,
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
    augmentation: dict[str, str] | None = None,
    head_note: str | None = None,
    teacher_model: Any = None,
) -> ModelCard:
    """The card of a trained model, from what a trainer knows: `Trainer.create_model_card`'s arguments plus
    `results` (a row label -> metrics; default: the latest evaluation in `log_history`). `cskd` holds the
    `cskd_*` and `teacher_kd_*` knobs; as in `Trainer`, `dataset` is the name shown and `dataset_tags` the Hub
    id(s). `teacher_model`: the teacher whose term was in the loss (None: no teacher term)."""
    teacher = None
    if teacher_model is not None and cskd.teacher_kd_weight > 0:
        name = shown_name(getattr(getattr(teacher_model, "config", None), "_name_or_path", None))
        teacher = {"name": name or type(teacher_model).__name__, "weight": cskd.teacher_kd_weight,
                   "temperature": cskd.teacher_kd_temperature}  # fmt: skip
    mixing = None
    if cskd.mixup_alpha > 0 or cskd.cutmix_alpha > 0:
        mixing = {"mixup_alpha": cskd.mixup_alpha, "cutmix_alpha": cskd.cutmix_alpha,
                  "switch_prob": cskd.mixup_switch_prob, "prob": cskd.mixup_prob,
                  "unmixed_share": cskd.cskd_queue_unmixed_share if cskd.cskd_lambda > 0 and cskd.cskd_mode == "queue"
                  else None}  # fmt: skip
    if results is None:
        latest = latest_eval_metrics(log_history)
        results = {"CS-KD" if cskd.cskd_lambda > 0 else "cross-entropy": latest} if latest else {}
    dataset_name = dataset[0] if isinstance(dataset, list) else dataset
    dataset_id = dataset_tags[0] if isinstance(dataset_tags, list) else dataset_tags
    return build_model_card(
        model_name=model_name or os.path.basename(os.path.abspath(args.output_dir)),
        results=results,
        dataset_name=dataset_name or dataset_id or "the training data",
        dataset_id=dataset_id,
        eval_split=eval_split,
        cskd={
            "lambda": cskd.cskd_lambda,
            "temperature": cskd.cskd_temperature,
            "mode": cskd.cskd_mode,
            "queue_size": cskd.cskd_queue_size,
            "queue_dtype": cskd.cskd_queue_dtype,
        },  # fmt: skip
        num_labels=model.config.num_labels,
        task=task_of(model, tasks),
        hyperparameters=card_hyperparameters(args),
        base_model=finetuned_from if finetuned_from is not None else getattr(model.config, "_name_or_path", None),
        calibration=calibration,
        reliability_diagram=reliability_diagram,
        num_bins=num_bins,
        repo_id=repo_id,
        license=license,
        language=language,
        tags=[tags] if isinstance(tags, str) else tags,
        library_name="timm" if getattr(model.config, "model_type", None) == "timm_wrapper" else "transformers",
        augmentation=augmentation,
        head_note=head_note,
        teacher=teacher,
        mixing=mixing,
    )


def calibrated_card(
    model: Any,
    source: str,
    calibration: dict[str, Any],
    dataset_name: str,
    dataset_id: str | None = None,
    revision: str | None = None,
    diagrams: list[dict[str, str]] | None = None,
    num_bins: int | None = None,
    repo_id: str | None = None,
) -> ModelCard:
    """The card of a checkpoint `hf-cskd calibrate` calibrated but did not train: what is known (the source model,
    its architecture, T and where it was fitted) and the metrics before and after on each split measured."""
    base_model = hub_id(source)
    library_name = "timm" if getattr(model.config, "model_type", None) == "timm_wrapper" else "transformers"
    splits = [(calibration["split"], calibration)] + [(name, m) for name, m in calibration.get("reported", {}).items()]
    rows = {f"{split}, {when}": record[when] for split, record in splits for when in ("before", "after") if when in record}
    report_split, report = splits[-1]
    eval_results = [
        EvalResult(task_type="image-classification", task_name="Image Classification",
                   dataset_type=hub_id(dataset_id) or dataset_name, dataset_name=dataset_name,
                   dataset_split=report_split, metric_type=key, metric_name=f"{METRICS[key]} ({when} temperature scaling)",
                   metric_value=float(report[when][key]))
        for when in ("before", "after") for key in MODEL_INDEX_METRICS if key in report.get(when, {})
    ]  # fmt: skip
    resamples = calibration.get("bootstrap_resamples")
    card_data = ModelCardData(
        base_model=base_model, datasets=[hub_id(dataset_id)] if hub_id(dataset_id) else None,
        library_name=library_name, pipeline_tag="image-classification",
        tags=sorted({"image-classification", "calibration", "temperature-scaling", "hf-cskd", library_name}),
        metrics=["accuracy", "ece", "nll"], eval_results=eval_results, model_name=shown_name(repo_id) or "calibrated",
    )  # fmt: skip
    return ModelCard.from_template(
        card_data,
        template_path=template_path("calibrated_model_card.md"),
        model_name=f"{shown_name(source)} (calibrated)",
        base_model=base_model,
        base_revision=revision if revision not in (None, "main") else None,
        source_name=shown_name(source),
        architecture=type(model).__name__,
        num_labels=model.config.num_labels,
        dataset_name=dataset_name,
        calibration=calibration,
        calibration_table=calibration_table(rows),
        resamples=resamples,
        num_bins=num_bins or "the default",
        diagrams=diagrams or [],
        repo_id=repo_id or "path/to/calibrated-model",
        library_name=library_name,
    )
