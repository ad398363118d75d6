"""Streamed training sets (`datasets` streaming from a local parquet file, torch IterableDataset), both modes."""

import json
import os
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import TEARDOWN_ABORT, make_image_dataset, make_vit, run_group, run_processes, training_args
from datasets import ClassLabel, Dataset, Value, load_dataset
from test_recipe import free_port
from torch.utils.data import DataLoader

from hf_cskd import CSKDTrainer, DataCollatorForClassPairs
from hf_cskd.targets.stream_pairing import StreamPairedDataset

SCRIPTS = Path(__file__).parent / "scripts"


@pytest.fixture
def parquet_stream(tmp_path):
    """30 examples of 3 classes, shuffled order, in two parquet files (two shards), read with streaming=True."""
    data = make_image_dataset(per_class=10).with_format(None)
    data = data.add_column("idx", list(range(len(data)))).shuffle(seed=0).flatten_indices()
    files = [str(tmp_path / f"train-{i}.parquet") for i in range(2)]
    for i, path in enumerate(files):
        data.shard(2, i, contiguous=True).to_parquet(path)
    return lambda: load_dataset("parquet", data_files=files, split="train", streaming=True)


def pairs_of(paired, epoch=0):
    paired.set_epoch(epoch)
    return [(e["idx"], e["pair_idx"], e["label"], e["pair_label"], e["cskd_self_pair"]) for e in paired]


def test_stream_pairs_share_the_label_and_are_reproducible(parquet_stream):
    paired = StreamPairedDataset(parquet_stream(), num_labels=3, buffer_size=4, seed=0)
    first = pairs_of(paired)
    assert len(first) == 30 and all(label == pair_label for _, _, label, pair_label, _ in first)
    # The first example of each class meets nothing buffered: paired with itself, and flagged.
    assert sum(flag for *_, flag in first) == 3
    assert all((anchor == pair) == bool(flag) for anchor, pair, _, _, flag in first)
    assert pairs_of(StreamPairedDataset(parquet_stream(), num_labels=3, buffer_size=4, seed=0)) == first
    second_epoch = pairs_of(paired, epoch=1)
    assert [p[:1] for p in second_epoch] == [p[:1] for p in first]  # same stream order ...
    assert sum(a[1] != b[1] for a, b in zip(first, second_epoch)) > 5  # ... other partners
    other_seed = pairs_of(StreamPairedDataset(parquet_stream(), num_labels=3, buffer_size=4, seed=1))
    assert sum(a[1] != b[1] for a, b in zip(first, other_seed)) > 5


def test_each_dataloader_worker_holds_its_own_buffers(parquet_stream):
    assert parquet_stream().num_shards == 2
    paired = StreamPairedDataset(parquet_stream(), num_labels=3, buffer_size=4, seed=0)
    loader = DataLoader(paired, batch_size=5, num_workers=2, collate_fn=DataCollatorForClassPairs())
    shard_of = {e["idx"]: 0 for e in parquet_stream().shard(2, 0)} | {e["idx"]: 1 for e in parquet_stream().shard(2, 1)}
    seen = []
    for batch in loader:
        assert torch.equal(batch["labels"], batch["pair_labels"])
        # A worker reads one shard and draws partners from its own buffers only: never across shards.
        assert all(shard_of[a] == shard_of[p] for a, p in zip(batch["idx"].tolist(), batch["pair_idx"].tolist()))
        seen += batch["idx"].tolist()
    assert sorted(seen) == list(range(30))  # every example once


@pytest.mark.parametrize(
    "values, message",
    [([0, 5], "Example 1 of the stream has label 5 in 'label', outside \\[0, 3\\)"),
     (["cat", "dog"], "Example 0 of the stream has 'label' = 'cat', not a class index.*cast_column"),
     ([0.5, 1.0], "Example 0 of the stream has 'label' = 0.5"),
     ([[0, 1], [1]], "Example 0 of the stream has 'label' = a list")],
)  # fmt: skip
def test_bad_stream_labels_name_their_position(values, message):
    stream = Dataset.from_dict({"x": [0.0] * len(values), "label": values}).to_iterable_dataset()
    with pytest.raises(ValueError, match=message):
        list(StreamPairedDataset(stream, num_labels=3))


def test_a_string_label_feature_fails_before_training(tmp_path):
    stream = Dataset.from_dict({"pixel_values": [[0.0]], "label": ["cat"]}).to_iterable_dataset()
    assert stream.features["label"] == Value("string")
    with pytest.raises(ValueError, match="holds strings.*class_encode_column"):
        CSKDTrainer(model=make_vit(), args=training_args(tmp_path, max_steps=2), train_dataset=stream)


@pytest.mark.parametrize("mode", ["pairs", "queue"])
def test_trainer_on_a_stream_logs_and_resumes_to_the_same_weights(tmp_path, parquet_stream, mode):
    def stream():
        return parquet_stream().with_format("torch").select_columns(["pixel_values", "label"])

    assert isinstance(parquet_stream().features["label"], ClassLabel)
    common = dict(cskd_mode=mode, max_steps=16, save_strategy="steps", save_steps=5)
    common["cskd_queue_size" if mode == "queue" else "cskd_stream_buffer_size"] = 4
    full = CSKDTrainer(model=make_vit(seed=3), args=training_args(tmp_path / "full", **common), train_dataset=stream())
    full.train()
    logs = [log for log in full.state.log_history if "cskd_loss" in log]
    assert len(logs) == 16 and any(log["cskd_loss"] > 0 for log in logs)
    if mode == "queue":
        assert logs[0]["cskd_queue_hit"] < 1 and logs[-1]["cskd_queue_hit"] == 1
    else:
        assert logs[0]["cskd_self_pair"] > 0 and logs[-1]["cskd_self_pair"] == 0  # 8 steps per pass over 30
    # Resume inside the first pass over the stream: Trainer replays the skipped batches, which rebuilds
    # the pair buffers (pairs mode); the queue comes from the checkpoint (queue mode).
    checkpoint = tmp_path / "full" / "out" / "checkpoint-5"
    resumed = CSKDTrainer(model=make_vit(seed=4), args=training_args(tmp_path / "resumed", **common),
                          train_dataset=stream())  # fmt: skip
    resumed.train(resume_from_checkpoint=str(checkpoint))
    expected = full.model.state_dict()
    for name, value in resumed.model.state_dict().items():
        torch.testing.assert_close(value, expected[name], rtol=1e-5, atol=1e-6, msg=name)


@pytest.mark.parametrize("mode", ["pairs", "queue"])
def test_two_processes_on_a_stream(tmp_path, mode):
    env = {**os.environ, "PROBE_DIR": str(tmp_path), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
               str(free_port()), str(SCRIPTS / "stream_probe.py"), str(tmp_path / "out"), mode]  # fmt: skip
    done = run_processes(command, env)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-5000:]
    records = {r: json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)}
    assert len(records[0]) == len(records[1]) == 10  # both ranks ran every step: no hang on uneven shards
    first_pass = {r: [a for rec in recs[:2] for a in rec["anchors"]] for r, recs in records.items()}
    assert not set(first_pass[0]) & set(first_pass[1])  # each rank trains on its own examples
    for recs in records.values():
        for rec in recs:
            assert all(0 <= a < 29 for a in rec["anchors"])
            if mode == "pairs":
                assert rec["labels"] == rec["pair_labels"]


def test_run_processes_reruns_only_a_teardown_abort(tmp_path):
    """The harness of the two-process tests: one rerun for the gloo teardown abort, none for a real failure."""
    script = (
        "import pathlib, sys; marker = pathlib.Path(sys.argv[1]); first = not marker.exists(); marker.touch(); "
        f"sys.stderr.write({TEARDOWN_ABORT!r} if first else ''); sys.exit(int(sys.argv[2]) if first else 0)"
    )
    command = [sys.executable, "-c", script, str(tmp_path / "marker"), "134", "--master_port", "1"]
    assert run_processes(command, dict(os.environ)).returncode == 0  # aborted, rerun, passed
    failing = [sys.executable, "-c", "import sys; sys.exit(3)", "--master_port", "1"]
    assert run_processes(failing, dict(os.environ)).returncode == 3


def test_a_run_over_its_time_is_killed_with_its_children(tmp_path):
    """A hung two-process run must not leave its ranks running (they would slow every later test)."""
    child = "import os, pathlib, sys, time; pathlib.Path(sys.argv[1]).write_text(str(os.getpid())); time.sleep(60)"
    parent = (f"import subprocess, sys, time; subprocess.Popen([sys.executable, '-c', {child!r}, sys.argv[1]]); "
              "time.sleep(60)")  # fmt: skip
    with pytest.raises(AssertionError, match="ran over 3 s"):
        run_group([sys.executable, "-c", parent, str(tmp_path / "pid")], dict(os.environ), timeout=3)
    pid = int((tmp_path / "pid").read_text())
    time.sleep(0.5)
    state = Path(f"/proc/{pid}/stat")
    assert not state.exists() or state.read_text().split()[2] == "Z"  # gone (or a zombie awaiting its reaper)


def test_queue_mode_on_a_stream_refuses_a_bad_label_on_the_host(tmp_path):
    """A stream's labels cannot be checked up front: the collator checks each batch on the host (no device sync)."""
    labels = [0, 1, 2, 5, 0, 1, 2, 0]
    rows = Dataset.from_dict({"pixel_values": torch.randn(8, 1, 8, 8).tolist(), "label": labels}).with_format("torch")
    trainer = CSKDTrainer(model=make_vit(), args=training_args(tmp_path, cskd_mode="queue", max_steps=2),
                          train_dataset=rows.to_iterable_dataset())  # fmt: skip
    with pytest.raises(ValueError, match=r"A batch has labels in \[0, 5\], outside \[0, 3\)\. Drop unlabeled"):
        trainer.train()
    collate = DataCollatorForClassPairs(num_labels=3)
    assert collate([{"labels": torch.tensor(2)}])["labels"].tolist() == [2]  # in range: passes
