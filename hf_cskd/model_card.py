"""The CS-KD model card: metrics before/after temperature scaling, hyperparameters, usage, citation."""

from pathlib import Path
from typing import Any

from huggingface_hub import EvalResult, ModelCard, ModelCardData

TEMPLATE_PATH = Path(__file__).parent / "templates" / "cskd_model_card.md"

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
MODEL_INDEX_METRICS = {"accuracy": "Accuracy", "ece": "ECE", "nll": "NLL"}


def card_hyperparameters(training_args: Any) -> dict[str, Any]:
    values = {key: getattr(training_args, key) for key in CARD_HYPERPARAMETERS if hasattr(training_args, key)}
    values["world_size"] = getattr(training_args, "world_size", 1)
    return {key: getattr(value, "value", value) for key, value in values.items()}


def build_model_card(
    *,
    model_name: str,
    results: dict[str, dict[str, float]],
    dataset_name: str,
    eval_split: str,
    cskd_temperature: float,
    cskd_lambda: float,
    num_labels: int,
    hyperparameters: dict[str, Any] | None = None,
    dataset_id: str | None = None,
    base_model: str | None = None,
    calibration_temperature: float | None = None,
    calibration_split: str = "validation",
    reliability_diagram: str | None = None,
    num_bins: int | None = None,
    repo_id: str | None = None,
    license: str | None = None,
    language: str | list[str] | None = None,
    tags: list[str] | None = None,
) -> ModelCard:
    """Render the card; `results` maps a row label (e.g. "CS-KD + temperature scaling") to its metrics."""
    eval_results = [
        EvalResult(
            task_type="image-classification",
            task_name="Image Classification",
            dataset_type=dataset_id or dataset_name,
            dataset_name=dataset_name,
            dataset_split=eval_split,
            metric_type=metric,
            metric_name=f"{label} ({row})",
            metric_value=float(values[metric]),
        )
        for row, values in results.items()
        for metric, label in MODEL_INDEX_METRICS.items()
        if metric in values
    ]
    card_data = ModelCardData(
        model_name=model_name,
        base_model=base_model,
        datasets=[dataset_id] if dataset_id else None,
        library_name="transformers",
        pipeline_tag="image-classification",
        license=license,
        language=language,
        tags=sorted({"image-classification", "cs-kd", "hf-cskd", "calibration", *(tags or [])}),
        metrics=list(MODEL_INDEX_METRICS),
        eval_results=eval_results or None,
    )
    return ModelCard.from_template(
        card_data,
        template_path=str(TEMPLATE_PATH),
        model_name=model_name,
        base_model=base_model,
        dataset_name=dataset_name,
        eval_split=eval_split,
        results=results,
        cskd_temperature=cskd_temperature,
        cskd_lambda=cskd_lambda,
        num_labels=num_labels,
        hyperparameters=hyperparameters or {},
        calibration_temperature=calibration_temperature,
        calibration_split=calibration_split,
        reliability_diagram=reliability_diagram,
        num_bins=num_bins,
        repo_id=repo_id or model_name,
    )
