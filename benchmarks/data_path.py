"""Examples per second through the paired and the queue-mode data paths vs the unpaired one.

Targets: paired <= 2.2x the time per anchor; queue mode (the plain path plus a row index) >= 0.95x
the unpaired throughput.

Real decoding work: the embedded digits (PNG) with the recipe's training transform (decode,
random resized crop, normalize). The paired path loads each anchor and its pair, so about 2x the
decoding is expected; anything above that is overhead of the wrapper or the collator.

    python benchmarks/data_path.py [--repeats 5] [--num_workers 0]
"""

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import datasets
from datasets import load_dataset
from torch.utils.data import DataLoader
from transformers import ViTImageProcessorPil, default_data_collator

from hf_cskd import ClassPairedDataset, DataCollatorForClassPairs
from hf_cskd.data.transforms import train_transform
from hf_cskd.targets.queue import ExampleIdDataset
from hf_cskd.targets.stream_pairing import StreamPairedDataset

DIGITS = Path(__file__).resolve().parents[1] / "recipes" / "data" / "digits" / "train.parquet"


def epoch_seconds(dataset, collator, workers: int, shuffle: bool = True) -> float:
    loader = DataLoader(dataset, batch_size=64, shuffle=shuffle, collate_fn=collator, num_workers=workers)
    start = time.perf_counter()
    for _ in loader:
        pass
    return time.perf_counter() - start


def stream_epochs(processor, repeats: int) -> dict[str, list[float]]:
    """The same decode + transform work on a stream (`streaming=True`): unpaired, and paired on undecoded rows."""
    transform = train_transform(processor, scale=(0.5, 1.0), horizontal_flip=False)

    decode = datasets.Image().decode_example

    def decode_and_transform(batch):
        return transform({**batch, "image": [decode(value) for value in batch["image"]]})

    def stream():
        return load_dataset("parquet", data_files=str(DIGITS), split="train", streaming=True)

    unpaired = stream().map(transform, batched=True, batch_size=64, remove_columns=["image", "label"])
    undecoded = stream().cast_column("image", datasets.Image(decode=False))
    paired = StreamPairedDataset(undecoded, "label", num_labels=10, buffer_size=8, transform=decode_and_transform)
    runs = {"stream_unpaired": [], "stream_paired": []}
    for _ in range(repeats):
        runs["stream_unpaired"].append(epoch_seconds(unpaired, default_data_collator, 0, shuffle=False))
        runs["stream_paired"].append(epoch_seconds(paired, DataCollatorForClassPairs(), 0, shuffle=False))
    return runs


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--num_workers", type=int, default=0)
    args = parser.parse_args()
    processor = ViTImageProcessorPil(size={"height": 32, "width": 32}, image_mean=[0.5] * 3, image_std=[0.5] * 3)
    data = load_dataset("parquet", data_files=str(DIGITS), split="train")
    data = data.with_transform(train_transform(processor, scale=(0.5, 1.0), horizontal_flip=False))
    paired = ClassPairedDataset(data)
    with_ids = ExampleIdDataset(data)
    runs = {"unpaired": [], "paired": [], "queue": []}
    for _ in range(args.repeats):  # interleaved
        runs["unpaired"].append(epoch_seconds(data, default_data_collator, args.num_workers))
        runs["paired"].append(epoch_seconds(paired, DataCollatorForClassPairs(), args.num_workers))
        runs["queue"].append(epoch_seconds(with_ids, DataCollatorForClassPairs(), args.num_workers))
    stream_runs = stream_epochs(processor, args.repeats)
    median = {name: statistics.median(times) for name, times in runs.items()}
    median.update({name: statistics.median(times) for name, times in stream_runs.items()})
    ratio = median["paired"] / median["unpaired"]
    print(f"{len(data)} anchors per epoch, batch 64, {args.num_workers} workers, median of {args.repeats} epochs")
    for name in runs:
        print(f"  {name:8s} {median[name]:.3f}s/epoch  {len(data) / median[name]:8.0f} anchors/s")
    print(f"  paired / unpaired time per anchor = {ratio:.3f} (target <= 2.2: {'met' if ratio <= 2.2 else 'MISSED'})")
    throughput = median["unpaired"] / median["queue"]
    print(
        f"  queue / unpaired throughput = {throughput:.3f} (target >= 0.95: {'met' if throughput >= 0.95 else 'MISSED'})"
    )
    stream_ratio = median["stream_paired"] / median["stream_unpaired"]
    for name in stream_runs:
        print(f"  {name:15s} {median[name]:.3f}s/epoch  {len(data) / median[name]:8.0f} anchors/s")
    print(f"  stream: paired / unpaired time per anchor = {stream_ratio:.3f} (target <= 2.2: "
          f"{'met' if stream_ratio <= 2.2 else 'MISSED'}); queue mode reads the unpaired stream as it is")  # fmt: skip
    print("JSON " + json.dumps({"benchmark": "data_path", "anchors": len(data), "workers": args.num_workers,
                                **{f"{k}_s": round(v, 4) for k, v in median.items()}, "ratio": round(ratio, 3),
                                "queue_throughput_ratio": round(throughput, 3),
                                "stream_paired_ratio": round(stream_ratio, 3)}))  # fmt: skip
    sys.stdout.flush()


if __name__ == "__main__":
    main()
