"""Write a tiny image-folder dataset for the example plugin (docs/extending.md, "Use your own data").

One sub-folder per class, named after it, of 16x16 grayscale PNGs: six shapes drawn at random positions and
sizes with pixel noise (seeded: the same folder every time). The example plugin's ``example_shapes`` dataset
reads it from ``dataset_settings.example_shapes.root``. Your own data has the same layout:
``root/<class name>/<any name>.png|jpg``.

    python examples/make_image_folder.py data/example_shapes_images [--per-class 40]
"""

from __future__ import annotations

import argparse
import random
from pathlib import Path

from PIL import Image, ImageDraw

SIZE = 16


def _box(rng: random.Random) -> tuple[int, int, int, int]:
    side = rng.randint(7, 12)
    left, top = rng.randint(0, SIZE - side), rng.randint(0, SIZE - side)
    return left, top, left + side - 1, top + side - 1


def _draw(shape: str, draw: ImageDraw.ImageDraw, box: tuple[int, int, int, int]) -> None:
    left, top, right, bottom = box
    middle_x, middle_y = (left + right) // 2, (top + bottom) // 2
    if shape == "circle":
        draw.ellipse(box, outline=255, width=2)
    elif shape == "square":
        draw.rectangle(box, outline=255, width=2)
    elif shape == "triangle":
        draw.polygon([(middle_x, top), (right, bottom), (left, bottom)], outline=255)
    elif shape == "cross":
        draw.line([(left, top), (right, bottom)], fill=255, width=2)
        draw.line([(left, bottom), (right, top)], fill=255, width=2)
    elif shape == "plus":
        draw.line([(middle_x, top), (middle_x, bottom)], fill=255, width=2)
        draw.line([(left, middle_y), (right, middle_y)], fill=255, width=2)
    else:  # disc
        draw.ellipse(box, fill=255)


SHAPES = ("circle", "square", "triangle", "cross", "plus", "disc")


def make(root: Path, per_class: int = 30, seed: int = 0) -> Path:
    rng = random.Random(seed)
    for shape in SHAPES:
        folder = root / shape
        folder.mkdir(parents=True, exist_ok=True)
        for index in range(per_class):
            image = Image.new("L", (SIZE, SIZE), 0)
            _draw(shape, ImageDraw.Draw(image), _box(rng))
            noisy = bytes(min(255, max(0, value + rng.randint(-40, 40))) for value in image.tobytes())
            Image.frombytes("L", (SIZE, SIZE), noisy).save(folder / f"{shape}_{index:03d}.png")
    return root


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("root", type=Path, help="the folder to write (one sub-folder per class)")
    parser.add_argument("--per-class", type=int, default=30, help="images per class (default: %(default)s)")
    args = parser.parse_args()
    print(f"wrote {make(args.root, args.per_class)} ({len(SHAPES)} classes x {args.per_class} images)")


if __name__ == "__main__":
    main()
