"""Queue mode on a stream: how often does an anchor draw an earlier prediction of its own example?

A stream carries no example ids, so the queue cannot exclude an anchor's own entries: that can
only happen once the stream has come round (an example's prediction from the previous pass is
still among its class's K most recent). This replays the embedded digits' training stream (1,297
examples, 10 classes) through a `ClassQueue` with the true ids kept aside, batch 64, K = 8, for
several passes, both in file order and reshuffled every pass (`IterableDataset.shuffle`).

    python benchmarks/stream_self_meetings.py [--passes 5] [--queue_size 8] [--batch 64]
"""

import argparse
import json
from pathlib import Path

import numpy as np
import torch
from datasets import load_dataset

from hf_cskd.targets.class_queue import ClassQueue

DIGITS = Path(__file__).resolve().parents[1] / "recipes" / "data" / "digits" / "train.parquet"


def self_meetings(labels: np.ndarray, passes: int, size: int, batch: int, shuffle: bool) -> tuple[int, int]:
    """Replay the label stream through a queue; the queue keeps the true ids, the anchors have none (a stream)."""
    queue = ClassQueue(num_labels=10, size=size)
    meetings = draws = 0
    rng = np.random.default_rng(0)
    for _ in range(passes):
        order = rng.permutation(len(labels)) if shuffle else np.arange(len(labels))
        for start in range(0, len(order), batch):
            ids = torch.as_tensor(order[start : start + batch])
            y = torch.as_tensor(labels[ids.numpy()])
            # ClassQueue.draw for anchors without ids (NO_ID): every filled entry of the class is a candidate.
            candidates = queue.filled[y]
            scores = torch.rand(len(y), size, generator=queue._generator())
            choice = torch.where(candidates, scores, -1.0).argmax(dim=1)
            found = candidates.any(dim=1)
            meetings += int((found & (queue.ids[y, choice] == ids)).sum())
            draws += int(found.sum())
            queue.push(torch.zeros(len(y), 10), y, ids)  # the logits do not matter here
            queue.calls += 1
    return meetings, draws


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--passes", type=int, default=5)
    parser.add_argument("--queue_size", type=int, default=8)
    parser.add_argument("--batch", type=int, default=64)
    args = parser.parse_args()
    labels = np.asarray(load_dataset("parquet", data_files=str(DIGITS), split="train")["label"])
    for shuffle in (False, True):
        meetings, draws = self_meetings(labels, args.passes, args.queue_size, args.batch, shuffle)
        order = "reshuffled every pass" if shuffle else "file order"
        print(f"{order}: {meetings} of {draws} draws ({100 * meetings / draws:.3f} %) met the anchor's own example")
        print("JSON " + json.dumps({"benchmark": "stream_self_meetings", "shuffle": shuffle, "passes": args.passes,
                                    "queue_size": args.queue_size, "meetings": meetings, "draws": draws}))  # fmt: skip


if __name__ == "__main__":
    main()
