"""Calibration metrics (accuracy, ECE, adaptive ECE, classwise ECE, smooth ECE, MCE, NLL, Brier) as an `evaluate`
module, with bootstrap confidence intervals on request.

Load it offline with `evaluate.load(hf_cskd.calibration.metrics.evaluate_module_path())`
(`evaluate` needs the file named as its folder); predictions are
logits (one list of floats per example), references are class indices.
"""

import datasets
import evaluate

from hf_cskd.calibration.metrics import DEFAULT_NUM_BINS, MCE_MIN_COUNT, calibration_metrics

_DESCRIPTION = (
    "Top-1 accuracy; expected calibration error over equal-width (ece) and equal-mass (ace) bins of the top-label "
    "confidence, classwise ECE, smooth ECE (smece, relplot's definition), maximum calibration error (mce); NLL, Brier "
    "score and mean confidence; each with a 95 % percentile-bootstrap interval on request (<key>_ci)."
)
_KWARGS_DESCRIPTION = """
Args:
    predictions: logits, a list of floats per example.
    references: class indices.
    num_bins: number of bins of ECE, ACE, classwise ECE and MCE (default 15).
    min_bin_count: bins with fewer examples are left out of MCE (default 10).
    bootstrap_resamples: > 0 adds `<key>_ci = [low, high]` over that many resamples of the examples (default 0).
    seed: the resampling seed (default 0).
Returns:
    accuracy, ece, ace, classwise_ece, smece, mce, nll, brier, confidence (and their `_ci`)
"""
_CITATION = r"""@inproceedings{guo2017calibration,
  title={On Calibration of Modern Neural Networks}, author={Guo, Chuan and Pleiss, Geoff and Sun, Yu and Weinberger, Kilian Q.},
  booktitle={ICML}, year={2017}}
@inproceedings{nixon2019measuring, title={Measuring Calibration in Deep Learning},
  author={Nixon, Jeremy and Dusenberry, Michael W. and Zhang, Linchuan and Jerfel, Ghassen and Tran, Dustin},
  booktitle={CVPR Workshops}, year={2019}}
@inproceedings{kull2019beyond, title={Beyond Temperature Scaling: Obtaining Well-Calibrated Multiclass Probabilities
  with Dirichlet Calibration}, author={Kull, Meelis and others}, booktitle={NeurIPS}, year={2019}}
@inproceedings{blasiok2024smooth, title={Smooth ECE: Principled Reliability Diagrams via Kernel Smoothing},
  author={B{\l}asiok, Jaros{\l}aw and Nakkiran, Preetum}, booktitle={ICLR}, year={2024}}"""


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

    def _compute(self, predictions, references, num_bins: int = DEFAULT_NUM_BINS, min_bin_count: int = MCE_MIN_COUNT,
                 bootstrap_resamples: int = 0, seed: int = 0):  # fmt: skip
        return calibration_metrics(predictions, references, num_bins, min_bin_count, bootstrap_resamples, seed)
