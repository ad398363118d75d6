"""recipes/report.py: RESULTS.md and README's summary are generated from results/*.jsonl, verdicts from intervals."""

import json
import sys
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "recipes"))
import report  # noqa: E402

PROVENANCE = {"versions": {"python": "3.11", "torch": "2.13.0"}, "lock": "constraints.txt",
              "commit": {"sha": "0123456789abcdef", "dirty": False}, "command": "python recipes/quality_study.py",
              "machine": {"cores": 2, "device": "cpu"}}  # fmt: skip


def row(method: str, seed: int, error: float, ece: float = 0.05, nll: float = 0.5) -> dict:
    metrics = {"accuracy": 1 - error, "ece": ece, "nll": nll}
    return {"regime": "toy", "method": method, "seed": seed, "per_class": 10, "raw": metrics, "scaled": metrics,
            "temperature_fit": 1.0, "train_seconds": 1.0, "provenance": PROVENANCE,
            "intra_class": {"ratio": 1.0 + (method != "cross-entropy") * (0.1 + 0.01 * seed)}}  # fmt: skip


def write(folder: Path, rows: list[dict]) -> None:
    (folder / "results" / "archive").mkdir(parents=True, exist_ok=True)
    (folder / "results" / "toy.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (folder / "README.md").write_text(f"# x\n\n{report.SUMMARY_BEGIN}\nold\n{report.SUMMARY_END}\n\nrest\n")


def run(folder: Path, *flags: str) -> int:
    return report.main([*flags, "--results", str(folder / "results"), "--output", str(folder / "RESULTS.md"),
                        "--readme", str(folder / "README.md")])  # fmt: skip


@pytest.mark.parametrize("n", [2, 5, 10])
def test_the_interval_is_scipys_one_sample_t_interval(n):
    diffs = list(np.random.default_rng(n).normal(0.3, 1.0, n))
    expected = stats.ttest_1samp(diffs, 0.0).confidence_interval(0.95)
    assert report.Paired(diffs).interval == pytest.approx((expected.low, expected.high), rel=1e-9)


def test_the_verdict_is_read_from_the_interval_only():
    assert report.Paired([-1.0, -1.2, -0.9, -1.1, -0.8]).verdict == "lower"
    assert report.Paired([1.0, 1.2, 0.9, 1.1, 0.8]).verdict == "higher"
    # 4 of 5 seeds lower, yet the interval contains 0: a sign count is not a verdict
    wide = report.Paired([-1.0, -1.0, -1.0, -1.0, 3.0])
    assert wide.interval[0] < 0 < wide.interval[1] and wide.verdict == "no difference detected"
    assert report.Paired([-1.0]).verdict == "too few seeds to say"


def test_no_verdict_below_the_minimum_seed_count():
    # Three equal differences (error moves in steps of 100 / test images points): a zero-width interval excluding 0.
    few = report.Paired([-0.2] * 3)
    assert few.interval == pytest.approx((-0.2, -0.2)) and few.verdict == "too few seeds to say"
    clear = [-1.0, -1.2, -0.9, -1.1, -0.8, -1.0]
    assert report.Paired(clear[: report.MIN_SEEDS - 1]).verdict == "too few seeds to say"
    assert report.Paired(clear[: report.MIN_SEEDS]).verdict == "lower"


def test_results_and_readme_are_generated_and_checked(tmp_path):
    rng = np.random.default_rng(0)
    base = [0.30 + 0.03 * rng.standard_normal() for _ in range(6)]
    rows = [row("cross-entropy", s, e) for s, e in enumerate(base)]
    rows += [row("CS-KD queue", s, e - 0.02 + 0.002 * rng.standard_normal()) for s, e in enumerate(base)]
    write(tmp_path, rows)
    assert run(tmp_path, "--check") == 1  # nothing generated yet
    assert run(tmp_path) == 0 and run(tmp_path, "--check") == 0
    readme, results = (tmp_path / "README.md").read_text(), (tmp_path / "RESULTS.md").read_text()
    assert "old" not in readme and readme.endswith("\n\nrest\n")
    line = next(x for x in readme.splitlines() if "error points" in x)
    assert "CS-KD queue vs cross-entropy: **lower**" in line and "6/6 seeds lower" in line
    assert line in results  # README quotes the generated summary and nothing else
    assert "0123456" in results and "constraints.txt" in results  # what made the rows
    intra = next(x for x in results.splitlines() if x.startswith("| CS-KD queue | cross-entropy | +0.125 ["))
    assert intra.endswith("0/6 seeds lower | higher |")  # the paper's intra-class measure, paired too
    # A changed result makes the committed files stale; the verdict follows the numbers.
    rows[-1]["raw"]["accuracy"] = 0.0
    write(tmp_path, rows)
    (tmp_path / "README.md").write_text(readme)
    assert run(tmp_path, "--check") == 1
    run(tmp_path)
    assert "CS-KD queue vs cross-entropy: **no difference detected**" in (tmp_path / "README.md").read_text()


def test_the_training_time_is_the_median_run_not_a_mean_a_contended_run_drags():
    rows = [
        {**row("cross-entropy", seed, 0.3), "train_seconds": seconds} for seed, seconds in enumerate([120, 130, 1600])
    ]
    line = next(x for x in report.regime_section("toy", rows) if x.startswith("| cross-entropy | 3 |"))
    assert line.endswith("| 130 |")  # the mean (617) would be the one contended run


def test_the_summary_says_what_cskd_adds_to_another_method_against_that_method_alone():
    rng = np.random.default_rng(1)
    mixup = [0.20 + 0.03 * rng.standard_normal() for _ in range(6)]
    rows = [row("Mixup", s, e) for s, e in enumerate(mixup)]
    added = [0.01 + 0.001 * rng.standard_normal() for _ in mixup]
    rows += [row("Mixup + CS-KD queue", s, e + d) for s, (e, d) in enumerate(zip(mixup, added))]
    rows += [row("teacher KD", s, 0.2) for s in range(3)] + [row("teacher KD + CS-KD pairs", s, 0.1) for s in range(3)]
    lines = report.headline("toy", report.by_arm(rows))
    error = next(x for x in lines if "error points" in x)
    assert error.startswith("- `toy`, CS-KD added to another method, against that method alone, error points:")
    assert f"Mixup + CS-KD queue vs Mixup: **higher** ({100 * np.mean(added):+.2f} [" in error
    assert "0/6 seeds lower" in error
    assert "teacher KD + CS-KD pairs vs teacher KD: **too few seeds to say**" in error  # 3 seeds
    assert "CS-KD queue vs" not in error.replace("Mixup + CS-KD queue vs", "")  # only the arms that ran


def test_a_row_without_provenance_is_refused(tmp_path):
    rows = [row("cross-entropy", 0, 0.3), {**row("CS-KD queue", 0, 0.3), "provenance": {"command": "x"}}]
    write(tmp_path, rows)
    with pytest.raises(SystemExit, match=r"toy.jsonl:2: no commit, lock, machine, versions"):
        run(tmp_path)


def test_the_committed_results_are_what_the_rows_say():
    assert report.main(["--check"]) == 0


def test_a_tuned_arm_is_chosen_per_seed_on_validation_never_on_test():
    def run(
        method: str, seed: int, val_error: float, test_error: float, lam: float = 0.0, val_nll: float = 0.5
    ) -> dict:
        validation = {"accuracy": 1 - val_error, "ece": 0.05, "nll": val_nll}
        mode = "queue" if "queue" in method else "pairs"
        return {**row(method, seed, test_error), "lambda": lam, "mode": mode,
                "validation": {"raw": validation, "scaled": validation}}  # fmt: skip

    ce = report.TUNING["cross-entropy, tuned"]
    queue = report.TUNING["CS-KD queue, tuned"]
    rows = []
    for seed in (0, 1):
        # cross-entropy: the 1.7x run is best on validation (but worst on test), the others tie on error
        rows += [run(name, seed, 0.20 if "1.7x" in name else 0.30, 0.40 if "1.7x" in name else 0.10) for name in ce]
        # queue: λ = 2 best on validation (ties on error with λ = 0.5, lower NLL); then T = 1 at λ = 2
        for name, lam, nll in zip(queue, (0.5, 1.0, 2.0), (0.6, 0.7, 0.4)):
            rows.append(run(name, seed, 0.25 if lam != 1.0 else 0.35, 0.2, lam, nll))
    rows.append(run(report.second_temperature_arm("queue", 2.0), 0, 0.10, 0.3, 2.0))  # seed 0 only: T = 1 wins
    tuned = report.tuned_arms(report.by_arm(rows))
    assert [(r["seed"], r["chosen"]) for r in tuned["cross-entropy, tuned"]] == [
        (0, "cross-entropy, 1.7x epochs"),
        (1, "cross-entropy, 1.7x epochs"),
    ]
    assert tuned["cross-entropy, tuned"][0]["raw"]["accuracy"] == pytest.approx(0.60)  # its test numbers
    # seed 1 has no T = 1 run yet: not reported, rather than tuned on part of its grid
    assert [(r["seed"], r["chosen"]) for r in tuned["CS-KD queue, tuned"]] == [(0, "CS-KD queue (T=1, λ=2)")]
    assert "label smoothing, tuned" not in tuned  # no grid run at all


def test_a_claim_from_the_archive_is_checked_against_the_runs_under_the_lock(tmp_path):
    rng = np.random.default_rng(1)
    base = [0.30 + 0.03 * rng.standard_normal() for _ in range(5)]
    now = [row("cross-entropy", s, e) for s, e in enumerate(base)]
    now += [row("CS-KD queue", s, e + 0.001 * rng.standard_normal()) for s, e in enumerate(base)]  # no gain now
    write(tmp_path, now)
    archived = [{k: v for k, v in r.items() if k != "provenance"} for r in now]
    for r in archived:
        if r["method"] == "CS-KD queue":
            r["raw"] = {**r["raw"], "accuracy": r["raw"]["accuracy"] + 0.02}  # the archived claim: 2 points lower
    (tmp_path / "results" / "archive" / "toy.jsonl").write_text("".join(json.dumps(r) + "\n" for r in archived))
    run(tmp_path)
    lines = (tmp_path / "RESULTS.md").read_text().splitlines()
    error = next(x for x in lines if x.startswith("| CS-KD queue | error points | "))
    assert float(error.split(" | ")[2].split(" (")[0]) == pytest.approx(-2.0, abs=0.1) and "(5 seeds)" in error
    assert "no difference detected" in error and error.endswith("| **no** |")


def test_a_rerun_is_compared_with_the_cited_run_and_changes_nothing_cited(tmp_path):
    rows = [row("cross-entropy", s, 0.30 + 0.01 * s) for s in range(5)]
    write(tmp_path, rows)
    run(tmp_path)
    cited = (tmp_path / "RESULTS.md").read_text()
    assert "Re-runs of" not in cited
    rerun = row("cross-entropy", 2, 0.3275, ece=0.04)
    rerun["train_seconds"] = 0.5
    machine = {"cores": 2, "device": "cpu", "cpu": "Xeon", "cpu_capability": "AVX2"}
    rerun["provenance"] = {**PROVENANCE, "machine": machine}
    (tmp_path / "results" / "reruns").mkdir()
    (tmp_path / "results" / "reruns" / "toy.jsonl").write_text(json.dumps(rerun) + "\n")
    run(tmp_path)
    results = (tmp_path / "RESULTS.md").read_text()
    # the regime's tables still cite its own file: only the re-run section is new
    assert results.startswith(cited.split("## Not cited")[0].rstrip("\n"))
    line = next(x for x in results.splitlines() if x.startswith("| cross-entropy | 2 |"))
    # error 32.75 - 32.00 = +0.75 points, ECE 4 - 5 = -1.00 points, NLL unchanged; 1 s -> 0.5 s (rounded to 0)
    assert line == "| cross-entropy | 2 | +0.75 | -1.00 | +0.000 | 1 → 0 | 2 cores, cpu (Xeon, AVX2) |"
    assert f"error points {np.std([30, 31, 32, 33, 34], ddof=1):.2f}" in results  # the seed spread, for scale
