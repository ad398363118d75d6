"""Training and evaluation transforms for image classification, from an image processor, in plain torch.

Image processors only resize, rescale, normalize and center-crop; the random resized crop and
horizontal flip of training are done here with torch ops, so no torchvision is needed.
"""

import math
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F


def processor_image_size(processor: Any) -> tuple[int, int]:
    """The (height, width) the model takes, from an image processor's `crop_size` or `size`."""
    for attribute in ("crop_size", "size"):
        size = getattr(processor, attribute, None)
        if not size:
            continue
        size = dict(size)
        if "height" in size and "width" in size:
            return int(size["height"]), int(size["width"])
        if "shortest_edge" in size:
            return int(size["shortest_edge"]), int(size["shortest_edge"])
    raise ValueError(f"Cannot tell the input size of {type(processor).__name__}: it has no `crop_size` or `size`.")


def to_tensor(image: Any) -> torch.Tensor:
    """A PIL image (any mode) as a float tensor (3, H, W) in [0, 1]."""
    array = np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0
    return torch.from_numpy(array).permute(2, 0, 1)


def random_resized_crop(
    image: torch.Tensor,
    size: tuple[int, int],
    scale: tuple[float, float] = (0.08, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Crop a random area fraction in `scale` with aspect ratio in `ratio`, resize to `size`.

    The same sampling as torchvision's `RandomResizedCrop` (10 tries, then a center crop).
    """
    _, height, width = image.shape
    area = height * width
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target_area = area * torch.empty(1).uniform_(scale[0], scale[1], generator=generator).item()
        aspect = math.exp(torch.empty(1).uniform_(log_ratio[0], log_ratio[1], generator=generator).item())
        w = int(round(math.sqrt(target_area * aspect)))
        h = int(round(math.sqrt(target_area / aspect)))
        if 0 < w <= width and 0 < h <= height:
            top = int(torch.randint(0, height - h + 1, (1,), generator=generator))
            left = int(torch.randint(0, width - w + 1, (1,), generator=generator))
            break
    else:
        h, w = min(height, width), min(height, width)
        top, left = (height - h) // 2, (width - w) // 2
    crop = image[:, top : top + h, left : left + w]
    return F.interpolate(crop[None], size=size, mode="bilinear", antialias=True, align_corners=False)[0]


def random_crop_with_padding(
    image: torch.Tensor, size: tuple[int, int], padding: int, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Zero-pad by `padding` pixels, then crop `size` at a random place (the CIFAR augmentation)."""
    padded = F.pad(image, (padding, padding, padding, padding))
    top = int(torch.randint(0, padded.shape[1] - size[0] + 1, (1,), generator=generator))
    left = int(torch.randint(0, padded.shape[2] - size[1] + 1, (1,), generator=generator))
    return padded[:, top : top + size[0], left : left + size[1]]


def train_transform(
    processor: Any,
    image_column: str = "image",
    label_column: str = "label",
    scale: tuple[float, float] = (0.08, 1.0),
    horizontal_flip: bool = True,
    crop_padding: int | None = None,
) -> Callable[[dict[str, list]], dict[str, list]]:
    """A batched `with_transform` for training: random crop, flip, then the processor's normalization.

    The crop is a random resized crop with area fraction in `scale`, or, with `crop_padding`, a
    random crop of the (resized) image zero-padded by that many pixels.
    """
    size = processor_image_size(processor)
    mean = torch.tensor(processor.image_mean, dtype=torch.float32)[:, None, None]
    std = torch.tensor(processor.image_std, dtype=torch.float32)[:, None, None]

    def transform(batch: dict[str, list]) -> dict[str, list]:
        pixel_values = []
        for image in batch[image_column]:
            tensor = to_tensor(image)
            if crop_padding is None:
                tensor = random_resized_crop(tensor, size, scale)
            else:
                if tuple(tensor.shape[1:]) != size:
                    tensor = F.interpolate(tensor[None], size=size, mode="bilinear", antialias=True)[0]
                tensor = random_crop_with_padding(tensor, size, crop_padding)
            if horizontal_flip and torch.rand(1).item() < 0.5:
                tensor = tensor.flip(-1)
            pixel_values.append((tensor - mean) / std)
        return {"pixel_values": pixel_values, "labels": batch[label_column]}

    return transform


def eval_transform(
    processor: Any, image_column: str = "image", label_column: str = "label"
) -> Callable[[dict[str, list]], dict[str, list]]:
    """A batched `with_transform` for evaluation: the processor's own resize / center crop / normalization."""

    def transform(batch: dict[str, list]) -> dict[str, list]:
        images = [image.convert("RGB") for image in batch[image_column]]
        pixel_values = processor(images, return_tensors="pt")["pixel_values"]
        return {"pixel_values": list(pixel_values), "labels": batch[label_column]}

    return transform
