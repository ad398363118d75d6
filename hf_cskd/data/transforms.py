"""Training and evaluation transforms for image classification, from any image processor, in plain torch.

The numbers come from the model's own image processor (`input_spec`): input size, crop fraction,
mean/std, interpolation and channel order, from transformers processors (`size`/`crop_size` in any
of their forms) and from timm's (`data_config`). Training draws a random resized crop and a flip
with torch ops (no torchvision needed); evaluation uses the processor's own preprocessing where it
gives fixed-size pixels, and the same numbers otherwise. What cannot be read is refused with the
flag that sets it, never guessed.
"""

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

INTERPOLATIONS = {0: "nearest", 1: "bicubic", 2: "bilinear", 3: "bicubic", 4: "bilinear", 5: "bicubic"}
"""PIL resample codes (what transformers processors store) -> `F.interpolate` modes; box/hamming/lanczos
map to the nearest smooth mode."""


@dataclass(frozen=True)
class InputSpec:
    """What the model takes, read off its image processor: the numbers both transforms use."""

    size: tuple[int, int]
    """(height, width) of the model's input."""
    mean: tuple[float, ...]
    std: tuple[float, ...]
    crop_pct: float = 1.0
    """Evaluation crops `size` from the image resized to `size / crop_pct` (1.0: the image is resized to `size`)."""
    interpolation: str = "bilinear"
    bgr: bool = False
    """MobileViT's processors flip the channels to BGR."""
    source: str = ""
    """Which processor the numbers came from."""

    def normalize(self, image: torch.Tensor) -> torch.Tensor:
        """A (3, H, W) float image in [0, 1] -> the model's pixel values."""
        if self.bgr:
            image = image.flip(0)
        mean = torch.tensor(self.mean, dtype=torch.float32)[:, None, None]
        std = torch.tensor(self.std, dtype=torch.float32)[:, None, None]
        return (image - mean) / std

    def describe(self) -> str:
        mean = ", ".join(f"{v:.3g}" for v in self.mean)
        std = ", ".join(f"{v:.3g}" for v in self.std)
        order = ", BGR" if self.bgr else ""
        return f"{self.size[0]}x{self.size[1]} px, {self.interpolation}, mean ({mean}), std ({std}){order}"


def _size_pair(size: Any) -> tuple[int, int] | None:
    """(height, width) from a transformers size dict (any of its forms), or None."""
    if not size:
        return None
    if isinstance(size, int):
        return size, size
    get = size.get if isinstance(size, dict) else lambda key: getattr(size, key, None)
    if get("height") and get("width"):
        return int(get("height")), int(get("width"))
    for key in ("shortest_edge", "longest_edge"):
        if get(key):
            return int(get(key)), int(get(key))
    if get("max_height") and get("max_width"):
        return int(get("max_height")), int(get("max_width"))
    return None


def input_spec(processor: Any, image_size: int | None = None) -> InputSpec:
    """The input size, crop fraction, normalization and interpolation of `processor`'s model.

    Reads timm's `data_config` (`TimmWrapperImageProcessor`) or a transformers processor's
    `crop_size` (when it center-crops) / `size` (`height`+`width`, `shortest_edge`, `longest_edge`),
    `resample` and `crop_pct`; the size the processor outputs, when it outputs one size for any
    image, has the last word. The normalization and channel order are measured by running the
    processor on black, white and red images (`measured_normalization`: attributes such as
    `image_mean` exist on processors that never apply them, e.g. MobileViT's), read from
    `image_mean`/`image_std` only when the processor cannot run. `image_size` overrides the size
    (square). Raises, naming what is missing and the flag, when the processor does not say.
    """
    name = type(processor).__name__
    data_config = getattr(processor, "data_config", None)
    if data_config is not None:  # timm: input_size is (channels, height, width)
        size = (image_size, image_size) if image_size else tuple(int(v) for v in data_config["input_size"][-2:])
        interpolation = data_config.get("interpolation")  # timm also knows "random" and "lanczos"
        return InputSpec(
            size=size, mean=tuple(data_config["mean"]), std=tuple(data_config["std"]),
            crop_pct=float(data_config.get("crop_pct") or 1.0),
            interpolation=interpolation if interpolation in ("bilinear", "bicubic", "nearest") else "bicubic",
            source=f"{name} (timm data_config)",
        )  # fmt: skip
    if getattr(processor, "rescale_offset", False):
        raise ValueError(
            f"{name} rescales pixels to [-1, 1] (`rescale_offset=True`), which the recipe's transforms do not "
            "reproduce. Save the processor with rescale_offset=False and image_mean/image_std of 0.5 (the same "
            "pixels), or train with your own transform."
        )
    crops = getattr(processor, "do_center_crop", None) is not False
    crop = _size_pair(getattr(processor, "crop_size", None)) if crops else None
    resize = _size_pair(getattr(processor, "size", None))
    measured_size = fixed_output_size(processor)
    if image_size:
        size = (image_size, image_size)
    elif measured_size:  # what the processor outputs (Perceiver's crops before it resizes: attributes mislead)
        size = measured_size
    elif crop or resize:
        size = crop or resize
    else:
        raise ValueError(
            f"Cannot tell the input size of {name}: it has no `crop_size`, `size` or timm `data_config`. Pass "
            "--image_size N (the side, in pixels, that the model was trained at)."
        )
    measured = measured_normalization(processor, size)
    if getattr(processor, "do_normalize", True) is False:
        mean, std = (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)
    elif getattr(processor, "image_mean", None) is not None and getattr(processor, "image_std", None) is not None:
        mean, std = tuple(map(float, processor.image_mean)), tuple(map(float, processor.image_std))
    elif measured is not None:
        mean, std = measured[:2]
    else:
        raise ValueError(
            f"Cannot tell how {name} normalizes images: it has no `image_mean`/`image_std` and does not run on a "
            "plain image. Set them in the checkpoint's preprocessor_config.json (e.g. 0.5 and 0.5 for [-1, 1])."
        )
    bgr = bool(getattr(processor, "do_flip_channel_order", False))
    if measured is not None and not np.allclose(
        (*mean, *std, bgr), (*measured[0], *measured[1], measured[2]), atol=1e-4
    ):
        mean, std, bgr = measured  # the attributes say one thing, the processor does another: follow the processor
    crop_pct = getattr(processor, "crop_pct", None)
    if crop_pct is None:
        crop_pct = crop[0] / resize[0] if crop and resize and resize[0] > crop[0] else 1.0
    return InputSpec(
        size=size, mean=mean, std=std, crop_pct=float(crop_pct),
        interpolation=INTERPOLATIONS.get(int(getattr(processor, "resample", 2) or 2), "bilinear"),
        bgr=bgr, source=name,
    )  # fmt: skip


SIDES = ("height", "width", "shortest_edge", "longest_edge")


def with_input_size(processor: Any, side: int, model: Any = None) -> Any:
    """A copy of `processor` that outputs `side` x `side` pixels, for a model trained at that size.

    A transformers processor gets its `size` and `crop_size` scaled together (their ratio kept: the
    same crop fraction); a processor without them gets `size` = side. A timm processor is rebuilt
    from its `pretrained_cfg` with `input_size` (and `test_input_size`) = side, and `model.config`
    gets the same `pretrained_cfg`, so that the saved checkpoint tells `pipeline` and timm users the
    size it was trained at.
    """
    import copy

    if getattr(processor, "data_config", None) is not None:  # timm
        config = getattr(model, "config", None)
        pretrained_cfg = dict(getattr(config, "pretrained_cfg", None) or {})
        if not pretrained_cfg:
            raise ValueError("A timm processor needs the model's config.pretrained_cfg to change its input size.")
        pretrained_cfg["input_size"] = pretrained_cfg["test_input_size"] = [3, side, side]
        config.pretrained_cfg = pretrained_cfg
        return type(processor)(pretrained_cfg=pretrained_cfg, architecture=getattr(config, "architecture", None))
    resized = copy.deepcopy(processor)
    sizes = {a: dict(getattr(processor, a)) for a in ("size", "crop_size") if getattr(processor, a, None)}
    output = fixed_output_size(processor)
    if not sizes:
        resized.size = {"height": side, "width": side}
        return resized
    reference = output[0] if output else max(v for k, v in sizes["size"].items() if k in SIDES and v)
    for attribute, size in sizes.items():
        setattr(resized, attribute, {k: round(v * side / reference) for k, v in size.items() if k in SIDES and v})
    return resized


def measured_normalization(processor: Any, size: tuple[int, int]) -> tuple[tuple, tuple, bool] | None:
    """(mean, std, BGR?) of a processor, measured on black, white and red images of the input size (the center
    pixel: padding and resizing cannot move it); None when the processor gives no 3-channel pixels."""
    try:
        black, white, red = (
            processor(Image.new("RGB", (size[1], size[0]), color), return_tensors="pt")["pixel_values"][0].float()
            for color in ((0, 0, 0), (255, 255, 255), (255, 0, 0))
        )
    except Exception:  # noqa: BLE001 - a processor that cannot run on plain images: fall back to its attributes
        return None
    if black.ndim != 3 or black.shape[0] != 3:
        return None
    center = (slice(None), black.shape[1] // 2, black.shape[2] // 2)
    black, white, red = black[center], white[center], red[center]
    scale = white - black  # = 1 / std
    if bool((scale.abs() < 1e-6).any()):
        return None
    std = 1.0 / scale
    mean = -black * std
    red_channel = int(((red - black) / scale).argmax())
    return tuple(round(float(v), 6) + 0.0 for v in mean), tuple(round(float(v), 6) for v in std), red_channel == 2


def to_tensor(image: Any) -> torch.Tensor:
    """A PIL image (any mode) as a float tensor (3, H, W) in [0, 1]."""
    array = np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0
    return torch.from_numpy(array).permute(2, 0, 1)


def resize(image: torch.Tensor, size: tuple[int, int], mode: str = "bilinear") -> torch.Tensor:
    options = {"align_corners": False, "antialias": True} if mode != "nearest" else {}
    resized = F.interpolate(image[None], size=size, mode=mode, **options)[0]
    return resized.clamp_(0.0, 1.0) if mode == "bicubic" else resized


def random_resized_crop(
    image: torch.Tensor,
    size: tuple[int, int],
    scale: tuple[float, float] = (0.08, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
    generator: torch.Generator | None = None,
    mode: str = "bilinear",
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
    return resize(image[:, top : top + h, left : left + w], size, mode)


def resize_center_crop(image: torch.Tensor, size: tuple[int, int], crop_pct: float, mode: str) -> torch.Tensor:
    """Resize the shorter side to `max(size) / crop_pct` (keeping the aspect ratio), then center-crop `size`;
    with `crop_pct` 1 and a square `size`, the shorter side matches and the longer is cropped."""
    _, height, width = image.shape
    shorter = max(size) / crop_pct
    scale = shorter / min(height, width)
    new = (max(size[0], round(height * scale)), max(size[1], round(width * scale)))
    image = resize(image, new, mode)
    top, left = (new[0] - size[0]) // 2, (new[1] - size[1]) // 2
    return image[:, top : top + size[0], left : left + size[1]]


def random_crop_with_padding(
    image: torch.Tensor, size: tuple[int, int], padding: int, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Zero-pad by `padding` pixels, then crop `size` at a random place (the CIFAR augmentation)."""
    padded = F.pad(image, (padding, padding, padding, padding))
    top = int(torch.randint(0, padded.shape[1] - size[0] + 1, (1,), generator=generator))
    left = int(torch.randint(0, padded.shape[2] - size[1] + 1, (1,), generator=generator))
    return padded[:, top : top + size[0], left : left + size[1]]


def _spec(processor_or_spec: Any) -> InputSpec:
    return processor_or_spec if isinstance(processor_or_spec, InputSpec) else input_spec(processor_or_spec)


def describe_train_augmentation(
    spec: InputSpec, scale: tuple[float, float], horizontal_flip: bool, crop_padding: int | None = None
) -> str:
    """One line saying what the training transform does (logged at the start of a run, written in the card)."""
    if crop_padding is None:
        crop = f"random resized crop ({100 * scale[0]:.0f}-{100 * scale[1]:.0f} % of the area, aspect 3/4-4/3)"
    else:
        crop = f"random crop after {crop_padding} px zero padding"
    flip = "horizontal flip (p = 0.5)" if horizontal_flip else "no flip"
    return f"{crop}, {flip}, to {spec.describe()}"


def train_transform(
    processor: Any,
    image_column: str = "image",
    label_column: str = "label",
    scale: tuple[float, float] = (0.08, 1.0),
    horizontal_flip: bool = True,
    crop_padding: int | None = None,
) -> Callable[..., dict[str, list]]:
    """A batched transform for training: random crop, flip, then the processor's normalization.

    `processor` is an image processor or its `InputSpec`. The crop is a random resized crop with
    area fraction in `scale`, or, with `crop_padding`, a random crop of the (resized) image
    zero-padded by that many pixels. Called as `transform(batch)` (e.g. by `with_transform`) it draws
    from torch's global RNG; `transform(batch, generators)` draws image i's randomness from
    `generators[i]` (see `SeededRows`: exact resume).
    """
    spec = _spec(processor)

    def transform(batch: dict[str, list], generators: Sequence[torch.Generator | None] | None = None):
        pixel_values = []
        for image, generator in zip(batch[image_column], generators or [None] * len(batch[image_column])):
            tensor = to_tensor(image)
            if crop_padding is None:
                tensor = random_resized_crop(tensor, spec.size, scale, generator=generator, mode=spec.interpolation)
            else:
                if tuple(tensor.shape[1:]) != spec.size:
                    tensor = resize(tensor, spec.size, spec.interpolation)
                tensor = random_crop_with_padding(tensor, spec.size, crop_padding, generator)
            if horizontal_flip and torch.rand(1, generator=generator).item() < 0.5:
                tensor = tensor.flip(-1)
            pixel_values.append(spec.normalize(tensor))
        return {"pixel_values": pixel_values, "labels": batch[label_column]}

    return transform


def _probe_images() -> list[Image.Image]:
    """Two images of different aspect ratios: a processor that keeps aspect ratios gives two shapes."""
    gradient = np.add.outer(np.arange(48), np.arange(80)).astype(np.uint8)
    return [Image.fromarray(gradient).convert("RGB"), Image.fromarray(gradient.T.copy()).convert("RGB")]


def fixed_output_size(processor: Any) -> tuple[int, int] | None:
    """The (height, width) of the pixels `processor` outputs for any image; None when it keeps aspect ratios
    (outputs of several sizes) or cannot run on plain images.

    Raises when the processor's model takes something other than pixels (colour-cluster ids,
    variable-resolution patches): the recipe's transforms cannot produce those.
    """
    try:
        output = processor(_probe_images(), return_tensors="pt")
    except Exception:  # noqa: BLE001 - outputs of several sizes cannot be stacked; or it needs more than images
        return None
    if set(output.keys()) != {"pixel_values"} or output["pixel_values"].ndim != 4:
        shapes = {key: tuple(getattr(value, "shape", ())) for key, value in output.items()}
        raise ValueError(
            f"{type(processor).__name__} turns images into {shapes}, not one (3, height, width) pixel tensor per "
            "image; the recipe's augmentation produces pixel tensors only. Train this model with CSKDTrainer and a "
            "transform of your own that calls its processor."
        )
    if output["pixel_values"].shape[1] != 3:
        return None
    return tuple(int(v) for v in output["pixel_values"].shape[2:])


def processor_gives_fixed_pixels(processor: Any, spec: InputSpec) -> bool:
    """Whether `processor(images)` returns `pixel_values` of shape (3, *spec.size) for any image."""
    return fixed_output_size(processor) == spec.size


def eval_transform(
    processor: Any, image_column: str = "image", label_column: str = "label", spec: InputSpec | None = None
) -> Callable[[dict[str, list]], dict[str, list]]:
    """A batched `with_transform` for evaluation: the processor's own preprocessing when it gives fixed-size
    pixels of the spec's size; otherwise resize, center crop and normalization from the same numbers."""
    spec = spec or input_spec(processor)
    own = processor_gives_fixed_pixels(processor, spec)

    def transform(batch: dict[str, list]) -> dict[str, list]:
        images = [image.convert("RGB") for image in batch[image_column]]
        if own:
            pixel_values = list(processor(images, return_tensors="pt")["pixel_values"])
        else:
            pixel_values = [
                spec.normalize(resize_center_crop(to_tensor(image), spec.size, spec.crop_pct, spec.interpolation))
                for image in images
            ]
        return {"pixel_values": pixel_values, "labels": batch[label_column]}

    transform.description = (
        f"{spec.source}'s own preprocessing" if own else
        f"resize to {100 / spec.crop_pct:.0f} % of the input size, center crop, to {spec.describe()}"
    )  # fmt: skip
    return transform
