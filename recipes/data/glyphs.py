"""A pretraining set that ships with the installed packages: 62 glyph classes rendered from matplotlib's fonts.

Digits and Latin letters (0-9, A-Z, a-z) drawn with the TrueType fonts in
`matplotlib/mpl-data/fonts/ttf` that render all 62 of them (fonts whose glyphs are missing or
duplicated, such as the symbol and size-variant fonts, are left out), each with a random affine
distortion (rotation, shear, scale, shift), stroke width and pixel noise, then reduced to 8x8 the
way scikit-learn's digits were (a 32x32 bitmap, each 4x4 block's ink counted, 17 gray levels):
the input format of the embedded digits, so a model pretrained here fine-tunes on them. Nothing is
stored: the same `seed` gives the same images, byte for byte.

    python recipes/data/glyphs.py --per_class 5 --seed 0      # prints how many images, classes and fonts
"""

import argparse
import io
from functools import cache
from pathlib import Path

import matplotlib
import numpy as np
from datasets import ClassLabel, Dataset, Features, Image
from PIL import Image as PILImage
from PIL import ImageDraw, ImageFont

CLASSES = (
    [str(d) for d in range(10)]
    + [chr(c) for c in range(ord("A"), ord("Z") + 1)]
    + [chr(c) for c in range(ord("a"), ord("z") + 1)]
)
FONT_DIR = Path(matplotlib.get_data_path()) / "fonts" / "ttf"
CANVAS, BITMAP = 64, 32


REFERENCE_FONT = "DejaVuSans.ttf"
MIN_LIKENESS = 0.3  # mean correlation with the reference font's glyphs; symbol fonts score about 0.2


def _bitmap(font_path: Path, char: str) -> np.ndarray:
    """The glyph drawn large, cropped to a square around its ink, at 16x16."""
    canvas = PILImage.new("L", (CANVAS, CANVAS), 0)
    ImageDraw.Draw(canvas).text((CANVAS / 2, CANVAS / 2), char, fill=255, font=ImageFont.truetype(str(font_path), 40),
                                anchor="mm")  # fmt: skip
    box = canvas.getbbox()
    if box is None:
        return np.zeros(256)
    side = max(box[2] - box[0], box[3] - box[1])
    x0, y0 = (box[0] + box[2] - side) // 2, (box[1] + box[3] - side) // 2
    return np.asarray(canvas.crop((x0, y0, x0 + side, y0 + side)).resize((16, 16)), dtype=np.float64).ravel()


def _likeness(a: np.ndarray, b: np.ndarray) -> float:
    if a.std() == 0 or b.std() == 0:
        return 0.0
    return float(np.corrcoef(a, b)[0, 1])


@cache
def latin_fonts() -> tuple[Path, ...]:
    """The fonts that draw the 62 classes as Latin glyphs.

    A font is kept when its 62 glyphs are all drawn, all different, and look like the reference
    font's on average (correlation >= 0.3): symbol, math-extension and size-variant fonts map
    these characters to other shapes or to nothing and are left out.
    """
    reference = {char: _bitmap(FONT_DIR / REFERENCE_FONT, char) for char in CLASSES}
    fonts = []
    for path in sorted(FONT_DIR.glob("*.ttf")):
        bitmaps = [_bitmap(path, char) for char in CLASSES]
        distinct = len({b.tobytes() for b in bitmaps}) == len(CLASSES) and all(b.any() for b in bitmaps)
        if distinct and np.mean([_likeness(b, reference[c]) for b, c in zip(bitmaps, CLASSES)]) >= MIN_LIKENESS:
            fonts.append(path)
    return tuple(fonts)


def render(char: str, font_path: Path, rng: np.random.Generator) -> np.ndarray:
    """One 8x8 uint8 image of `char`: distorted, stroked, reduced like the digits, with noise."""
    font = ImageFont.truetype(str(font_path), int(rng.integers(30, 44)))
    canvas = PILImage.new("L", (CANVAS, CANVAS), 0)
    ImageDraw.Draw(canvas).text(
        (CANVAS / 2, CANVAS / 2), char, fill=255, font=font, anchor="mm", stroke_width=int(rng.integers(0, 3)),
        stroke_fill=255,
    )  # fmt: skip
    angle, shear = np.deg2rad(rng.uniform(-15, 15)), rng.uniform(-0.3, 0.3)
    scale = rng.uniform(0.85, 1.15)
    a, b = np.cos(angle) / scale, np.sin(angle) / scale + shear
    c, d = -np.sin(angle) / scale, np.cos(angle) / scale
    center, shift = CANVAS / 2, rng.uniform(-3, 3, size=2)
    offset = (center - a * center - b * center + shift[0], center - c * center - d * center + shift[1])
    canvas = canvas.transform(canvas.size, PILImage.AFFINE, (a, b, offset[0], c, d, offset[1]), PILImage.BILINEAR)
    box = canvas.getbbox() or (0, 0, CANVAS, CANVAS)
    side = max(box[2] - box[0], box[3] - box[1])
    x0, y0 = (box[0] + box[2] - side) // 2, (box[1] + box[3] - side) // 2
    glyph = canvas.crop((x0, y0, x0 + side, y0 + side)).resize((BITMAP, BITMAP), PILImage.BILINEAR)
    ink = (np.asarray(glyph) > 127).reshape(8, 4, 8, 4).sum(axis=(1, 3))  # 0..16, like sklearn's digits
    noisy = ink / 16.0 * 255.0 + rng.normal(0, 12, size=ink.shape)
    return np.clip(noisy, 0, 255).round().astype(np.uint8)


def glyph_dataset(per_class: int, seed: int = 0) -> Dataset:
    """`per_class` images of each of the 62 classes (fonts in turn), as a `datasets.Dataset` of PNGs."""
    fonts = latin_fonts()
    rng = np.random.default_rng(seed)
    images, labels = [], []
    for label, char in enumerate(CLASSES):
        for i in range(per_class):
            buffer = io.BytesIO()
            PILImage.fromarray(render(char, fonts[i % len(fonts)], rng), mode="L").save(buffer, format="PNG")
            images.append({"bytes": buffer.getvalue(), "path": None})
            labels.append(label)
    features = Features({"image": Image(), "label": ClassLabel(names=CLASSES)})
    return Dataset.from_dict({"image": images, "label": labels}, features=features)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--per_class", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    data = glyph_dataset(args.per_class, args.seed)
    fonts = latin_fonts()
    print(f"{len(data)} images, {len(CLASSES)} classes, {len(fonts)} fonts: {', '.join(p.stem for p in fonts)}")


if __name__ == "__main__":
    main()
