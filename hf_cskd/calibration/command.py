"""`hf-cskd calibrate MODEL`: temperature scaling for any image classifier, trained with anything.

Most classifiers on the Hub are over-confident. This loads one (a local folder or a Hub id, transformers or
timm), predicts a labelled validation split, fits T there, bakes it into the head exactly as `CSKDTrainer`
does, and writes a checkpoint whose plain softmax is calibrated, with `calibration.json` (every metric with
its 95 % interval, before and after, on validation and on a test split when given), reliability diagrams and
a card that says what is known about the source model. `--no_bake` only reports.
"""

import json
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers import AutoModelForImageClassification, HfArgumentParser
from transformers.utils import logging

from ..data.errors import NamedRows, one_line_errors
from ..data.splits import SPLIT_NAMES, DataArguments, class_index_map, load_labelled_splits
from ..data.transforms import eval_transform, input_spec
from ..hub.model_card import calibrated_card, hub_id, shown_name
from ..hub.push import push_folder_to_hub
from ..models.outputs import model_logits
from ..models.pretrained import has_classification_head, load_config, load_image_processor
from .diagram import plot_reliability_diagram
from .metrics import DEFAULT_NUM_BINS, calibration_metrics
from .temperature import BOOTSTRAP_RESAMPLES, CalibrationNotApplied, calibrate_model, fitted_calibration

logger = logging.get_logger(__name__)


@dataclass
class CalibrateArguments:
    """What to calibrate and where the result goes (the data: `data.splits.DataArguments`)."""

    model_name_or_path: str = field(metadata={"help": "MODEL: a local checkpoint folder or a Hub model id."})
    output_dir: str | None = field(
        default=None, metadata={"help": "Where the calibrated checkpoint goes (default: <model name>-calibrated)."}
    )
    model_revision: str = field(default="main", metadata={"help": "Branch, tag or commit of the Hub model."})
    cache_dir: str | None = field(default=None, metadata={"help": "Where to cache Hub downloads."})
    batch_size: int = field(default=64, metadata={"help": "Images per forward pass."})
    no_bake: bool = field(
        default=False, metadata={"help": "Only report: fit T and measure, write no checkpoint."}
    )
    bake_on_bound: bool = field(
        default=False, metadata={"help": "Bake a temperature that landed on a bound of its search (not trusted)."}
    )
    bootstrap_resamples: int = field(
        default=BOOTSTRAP_RESAMPLES, metadata={"help": "Resamples behind each metric's 95 percent interval (0: none)."}
    )
    push_to_hub: bool = field(default=False, metadata={"help": "Publish the calibrated checkpoint to the Hub."})
    hub_model_id: str | None = field(default=None, metadata={"help": "The Hub repo to push to (user/name)."})
    hub_token: str | None = field(default=None, metadata={"help": "Hub token (default: the logged-in one)."})
    hub_private_repo: bool | None = field(default=None, metadata={"help": "Create the Hub repo as private."})


def check_calibration_split(data: DataArguments) -> None:
    """A temperature fitted on the test split leaves nothing honest to report on: refuse it."""
    if SPLIT_NAMES.get(data.validation_split.lower()) == "test":
        raise ValueError(
            f"--validation_split {data.validation_split}: a temperature fitted on the test split makes its metrics "
            "there meaningless. Fit on a validation split, and name the test split with --test_split to report on it."
        )


def load_classifier(args: CalibrateArguments) -> tuple[Any, Any]:
    """The source classifier as saved (head and classes kept) and its image processor; refuses other models."""
    common = {"revision": args.model_revision, "cache_dir": args.cache_dir}
    name = args.model_name_or_path
    config = load_config(name, **common)
    if not has_classification_head(config):
        raise ValueError(
            f"{name} is not an image classifier (architectures {getattr(config, 'architectures', None)}): "
            "hf-cskd calibrate needs a checkpoint with a classification head (…ForImageClassification, or timm)."
        )
    if getattr(config, "problem_type", None) in ("multi_label_classification", "regression") or config.num_labels < 2:
        raise ValueError(
            f"{name} is a {config.problem_type or 'single-output'} model: temperature scaling calibrates one softmax "
            "over two or more classes (a single-label classifier)."
        )
    model = AutoModelForImageClassification.from_pretrained(name, config=config, **common)
    return model.eval(), load_image_processor(name, **common)


def model_labels(model: Any) -> list[str]:
    names = getattr(model.config, "id2label", None) or {}
    return [str(names.get(i, f"LABEL_{i}")) for i in range(model.config.num_labels)]


@torch.no_grad()
def predict_logits(model: Any, dataset: Any, batch_size: int, description: str) -> tuple[np.ndarray, np.ndarray]:
    """Logits (float32) and labels of every example of a transformed dataset, with a progress bar."""
    from tqdm.auto import tqdm

    device = next(model.parameters()).device
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size)
    logits, labels = [], []
    for batch in tqdm(loader, desc=description, unit="batch"):
        logits.append(model_logits(model(pixel_values=batch["pixel_values"].to(device))).float().cpu())
        labels.append(batch["labels"])
    return torch.cat(logits).numpy(), torch.cat(labels).numpy()


def calibrate_checkpoint(args: CalibrateArguments, data: DataArguments) -> dict[str, Any]:
    """Run `hf-cskd calibrate`; returns the calibration record written to `calibration.json`. Raises
    `CalibrationNotApplied` (after writing the record, and no checkpoint) when T was not baked."""
    check_calibration_split(data)
    start = time.perf_counter()
    model, processor = load_classifier(args)
    model.to("cuda" if torch.cuda.is_available() else "cpu")
    raw = load_labelled_splits(data, args.cache_dir, need_train=False)
    transform = eval_transform(processor, data.image_column_name, data.label_column_name, input_spec(processor))
    splits = {name: NamedRows(raw[name].with_transform(transform), split=name) for name in ("validation", "test")
              if name in raw}  # fmt: skip
    predicted = {}
    for name, split in splits.items():
        mapping = class_index_map(raw[name].features[data.label_column_name].names, model_labels(model))
        logits, labels = predict_logits(model, split, args.batch_size, f"Predicting {name}")
        predicted[name] = (logits, mapping[labels])
    output = Path(args.output_dir or f"{shown_name(args.model_name_or_path)}-calibrated")
    output.mkdir(parents=True, exist_ok=True)
    split_name = data.validation_split if data.dataset_name else "validation"
    logits, labels = predicted["validation"]
    error = None
    if args.no_bake:
        record = {**fitted_calibration(logits, labels, split_name, args.bootstrap_resamples), "baked": False}
    else:
        rows = splits["validation"].__getitems__(list(range(min(4, len(splits["validation"])))))
        example = {"pixel_values": torch.stack([row["pixel_values"] for row in rows]).to(model.device)}
        record, error = calibrate_model(model, logits, labels, example, split_name, args.bake_on_bound,
                                        args.bootstrap_resamples)  # fmt: skip
        record["baked"] = error is None
    temperature = record.get("temperature", record.get("fitted_temperature"))
    if "test" in predicted:
        test_logits, test_labels = predicted["test"]
        measure = lambda x: calibration_metrics(x, test_labels, DEFAULT_NUM_BINS, bootstrap_resamples=args.bootstrap_resamples)  # noqa: E731
        record["reported"] = {"test": {"examples": len(test_labels), "before": measure(test_logits),
                                       **({"after": measure(test_logits / temperature)} if "after" in record else {})}}  # fmt: skip
    record.update(
        source_model=hub_id(args.model_name_or_path) or shown_name(args.model_name_or_path),
        source_revision=args.model_revision, bootstrap_resamples=args.bootstrap_resamples,
        # where the data came from: Hub ids and split names as given, local folders by their name only
        data={k: shown_name(v) if k.endswith("_dir") else v for k, v in asdict(data).items()
              if v is not None and k.endswith(("_dir", "_split", "dataset_name", "dataset_config_name"))},
        wall_seconds=round(time.perf_counter() - start, 1),
    )  # fmt: skip
    report_split = "test" if "test" in predicted else "validation"
    report_logits, report_labels = predicted[report_split]
    diagrams = [{"path": "reliability_diagram_before.png", "title": f"source model ({report_split})"}]
    plot_reliability_diagram(report_logits, report_labels, output / diagrams[0]["path"], DEFAULT_NUM_BINS, diagrams[0]["title"])
    if "after" in record:
        diagrams.append({"path": "reliability_diagram_after.png",
                         "title": f"temperature scaling, T = {temperature:.3f} ({report_split})"})  # fmt: skip
        plot_reliability_diagram(report_logits / temperature, report_labels, output / diagrams[1]["path"],
                                 DEFAULT_NUM_BINS, diagrams[1]["title"])  # fmt: skip
    (output / "calibration.json").write_text(json.dumps(record, indent=2))
    if error is not None:
        raise error
    if args.no_bake:
        return record
    model.save_pretrained(output)  # safetensors; config.json carries calibration_temperature
    processor.save_pretrained(output)
    dataset_name = data.dataset_name or Path(data.validation_dir or data.train_dir or ".").resolve().parent.name
    card = calibrated_card(model, args.model_name_or_path, record, dataset_name, data.dataset_name,
                           args.model_revision, diagrams, DEFAULT_NUM_BINS, args.hub_model_id)  # fmt: skip
    card.save(output / "README.md")
    if args.push_to_hub:
        if args.hub_model_id is None:
            raise ValueError("--push_to_hub needs --hub_model_id user/name (the repo to publish to).")
        push_folder_to_hub(output, args.hub_model_id, token=args.hub_token, private=args.hub_private_repo,
                           commit_message="Calibrate with hf-cskd (temperature scaling)")  # fmt: skip
    return record


def summary(record: dict[str, Any]) -> str:
    """The before/after table printed at the end (accuracy, ECE, NLL with intervals)."""
    from ..hub.model_card import metric_cell

    splits = [(record["split"], record)] + list(record.get("reported", {}).items())
    lines = [f"{'':<24} {'accuracy':>24} {'ECE':>24} {'NLL':>26}"]
    for split, values in splits:
        for when in ("before", "after"):
            if when in values:
                cells = [metric_cell(values[when], key) for key in ("accuracy", "ece", "nll")]
                lines.append(f"{split + ', ' + when:<24} {cells[0]:>24} {cells[1]:>24} {cells[2]:>26}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """`hf-cskd calibrate MODEL [flags]`; bad input ends with one line that names the fix."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and not argv[0].startswith("-"):
        argv = ["--model_name_or_path", *argv]
    parser = HfArgumentParser((CalibrateArguments, DataArguments), prog="hf-cskd calibrate")
    args, data = parser.parse_args_into_dataclasses(argv)
    with one_line_errors():
        try:
            record = calibrate_checkpoint(args, data)
        except CalibrationNotApplied as error:  # its record was written: say so
            print(f"\nerror: {error}\n(the record is in calibration.json; no checkpoint was written)", file=sys.stderr)
            raise SystemExit(1) from None
    temperature = record.get("temperature", record.get("fitted_temperature"))
    print(f"\nT = {temperature:.4f} fitted on {record['split']} ({record['examples']} examples) in "
          f"{record['wall_seconds']:.1f} s; 95 % bootstrap intervals in brackets:\n\n{summary(record)}\n")  # fmt: skip
    return record
