"""Calibration metrics (accuracy, ECE, MCE, NLL, Brier) as an `evaluate` module.

Load it offline with `evaluate.load(hf_cskd.calibration.metrics.evaluate_module_path())`
(`evaluate` needs the file named as its folder); predictions are
logits (one list of floats per example), references are class indices.
"""

import datasets
import evaluate

from hf_cskd.calibration.metrics import DEFAULT_NUM_BINS, calibration_metrics

_DESCRIPTION = "Top-1 accuracy, expected and maximum calibration error (equal-width bins), NLL and Brier score."
_KWARGS_DESCRIPTION = """
Args:
    predictions: logits, a list of floats per example.
    references: class indices.
    num_bins: number of equal-width confidence bins for ECE/MCE (default 15).
Returns:
    accuracy, ece, mce, nll, brier
"""
_CITATION = """@inproceedings{guo2017calibration,
  title={On Calibration of Modern Neural Networks}, author={Guo, Chuan and Pleiss, Geoff and Sun, Yu and Weinberger, Kilian Q.},
  booktitle={ICML}, year={2017}}"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class Calibration(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {"predictions": datasets.Sequence(datasets.Value("float64")), "references": datasets.Value("int64")}
            ),
        )

    def _compute(self, predictions, references, num_bins: int = DEFAULT_NUM_BINS):
        return calibration_metrics(predictions, references, num_bins)
