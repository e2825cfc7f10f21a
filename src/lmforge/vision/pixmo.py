"""Vision data for the Molmo branch: generated scenes written as PixMo-style records, readers
for such records (ours or real PixMo files), and Molmo's pointing text format.

Scenes are shapes of a few colours on a 3 × 3 grid of cells (at most one per cell, jittered
inside it), so every caption, answer, count and point is known exactly. Records follow the
PixMo datasets' fields with the image as a path relative to the record file (PixMo ships
`image_url`; a local path or file:// URL is read, a remote one is refused: nothing downloads
at run time):

- pixmo_cap: {image, caption}
- pixmo_points: {image, label, points: [{x, y}]} (0-100, Molmo's normalised coordinates)
- pixmo_count: {image, label, count, points}
- vqa: {image, question, answer}

Each of our records also carries `objects` (shape, colour, centre and radius, 0-100), which
the scoring of points needs (is a point inside the target?).
"""

from __future__ import annotations

import random
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import numpy as np
from PIL import Image, ImageDraw

from lmforge.io.storage import InputError, atomic_dir, read_jsonl, write_jsonl_gz
from lmforge.runner import CFG, OUT_DIR, SEED, command
from lmforge.settings import Section


@dataclass(frozen=True)
class ScenesConfig(Section):
    SECTION = "vision.scenes"

    train_images: int
    eval_images: int
    max_objects: int
    image_size: int  # pixels per side

COLORS = {"red": (215, 45, 45), "green": (40, 160, 70), "blue": (45, 85, 215),
          "yellow": (225, 190, 30)}
SHAPES = ("circle", "square", "triangle")
ROWS = ("top", "middle", "bottom")
COLUMNS = ("left", "center", "right")
KINDS = ("pixmo_cap", "pixmo_points", "pixmo_count", "vqa")
NUMBER_WORDS = ("no", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")


def sample_scene(rng: random.Random, max_objects: int) -> tuple[list[dict], str]:
    """Shapes in distinct cells (centre and radius in % of the image side) and the colour to
    count, whose number of shapes is uniform over 0..min(3, max_objects), so that no count is
    a safe guess; the other shapes take the other colours."""
    counted = rng.choice(list(COLORS))
    count = rng.randint(0, min(3, max_objects))
    others = rng.randint(max(0, 1 - count), max_objects - count)
    colors = [counted] * count + [rng.choice([c for c in COLORS if c != counted])
                                  for _ in range(others)]
    rng.shuffle(colors)
    objects = []
    for cell, color in zip(sorted(rng.sample(range(9), len(colors))), colors):
        row, column = divmod(cell, 3)
        radius = rng.uniform(10.5, 13.5)
        objects.append({"shape": rng.choice(SHAPES), "color": color,
                        "x": round((column + 0.5) * 100 / 3 + rng.uniform(-2.5, 2.5), 1),
                        "y": round((row + 0.5) * 100 / 3 + rng.uniform(-2.5, 2.5), 1),
                        "r": round(radius, 1), "cell": cell})
    return objects, counted


def _outline(obj: dict, size: int) -> tuple[str, list[float]]:
    x, y, r = (obj[k] * size / 100 for k in ("x", "y", "r"))
    if obj["shape"] == "triangle":
        return "polygon", [x, y - r, x + r, y + r * 0.8, x - r, y + r * 0.8]
    return ("ellipse" if obj["shape"] == "circle" else "rectangle",
            [x - r * 0.85, y - r * 0.85, x + r * 0.85, y + r * 0.85])


def render(objects: list[dict], size: int, background: int) -> Image.Image:
    image = Image.new("RGB", (size, size), (background,) * 3)
    draw = ImageDraw.Draw(image)
    for obj in objects:
        kind, xy = _outline(obj, size)
        getattr(draw, kind)(xy, fill=COLORS[obj["color"]])
    return image


def object_mask(obj: dict, size: int) -> np.ndarray:
    """The pixels the object covers in a size × size image (for point-in-target scoring)."""
    mask = Image.new("L", (size, size), 0)
    kind, xy = _outline(obj, size)
    getattr(ImageDraw.Draw(mask), kind)(xy, fill=1)
    return np.asarray(mask, dtype=bool)


def where(obj: dict) -> str:
    row, column = divmod(obj["cell"], 3)
    return "in the center" if obj["cell"] == 4 else f"at the {ROWS[row]} {COLUMNS[column]}"


def caption(objects: list[dict]) -> str:
    """A dense caption: how many shapes, then each one with its place, in reading order."""
    parts = [f"a {o['color']} {o['shape']} {where(o)}" for o in objects]
    listed = parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]
    count = len(objects)
    return (f"{NUMBER_WORDS[count].capitalize()} shape{'s' if count > 1 else ''} on a gray "
            f"background: {listed}.")


def scene_records(image: str, objects: list[dict], counted: str, rng: random.Random
                  ) -> dict[str, list]:
    """Each kind's records for one scene: its caption, a pointing target (a colour and shape),
    a count (of the shapes of colour `counted`, possibly none) and one question."""
    labels = sorted({(o["color"], o["shape"]) for o in objects})
    color, shape = rng.choice(labels)
    targets = [o for o in objects if (o["color"], o["shape"]) == (color, shape)]
    counted_objects = [o for o in objects if o["color"] == counted]
    common = {"image": image, "objects": objects}
    return {
        "pixmo_cap": [{**common, "caption": caption(objects)}],
        "pixmo_points": [{**common, "label": f"{color} {shape}",
                          "points": [{"x": o["x"], "y": o["y"]} for o in targets]}],
        "pixmo_count": [{**common, "label": f"{counted} shapes", "count": len(counted_objects),
                         "points": [{"x": o["x"], "y": o["y"]} for o in counted_objects]}],
        "vqa": [{**common, **question(objects, rng)}],
    }


def question(objects: list[dict], rng: random.Random) -> dict:
    """A question about colour, shape or presence whose answer the scene fixes."""
    shapes = [s for s in SHAPES if sum(o["shape"] == s for o in objects) == 1]
    colors = [c for c in COLORS if sum(o["color"] == c for o in objects) == 1]
    kinds = ["presence"] + ["color"] * bool(shapes) + ["shape"] * bool(colors)
    kind = rng.choice(kinds)
    if kind == "color":
        shape = rng.choice(shapes)
        answer = next(o["color"] for o in objects if o["shape"] == shape)
        return {"question": f"What color is the {shape}?", "answer": answer}
    if kind == "shape":
        color = rng.choice(colors)
        answer = next(o["shape"] for o in objects if o["color"] == color)
        return {"question": f"What shape is the {color} object?", "answer": answer}
    color, shape = rng.choice(list(COLORS)), rng.choice(SHAPES)
    present = any((o["color"], o["shape"]) == (color, shape) for o in objects)
    return {"question": f"Is there a {color} {shape}?", "answer": "yes" if present else "no"}


def make_scenes(out_dir: str | Path, cfg: ScenesConfig | Mapping, seed: int) -> dict[str, int]:
    """`train` and `eval` scenes: PNG images under images/ and each kind's records per split
    (`<kind>.<split>.jsonl.gz`), written as one directory that appears atomically."""
    cfg = ScenesConfig.of(cfg)
    rng = random.Random(seed)
    counts = {}
    with atomic_dir(out_dir) as tmp:
        (tmp / "images").mkdir()
        for split in ("train", "eval"):
            records: dict[str, list] = {kind: [] for kind in KINDS}
            for index in range(getattr(cfg, f"{split}_images")):
                objects, counted = sample_scene(rng, cfg.max_objects)
                name = f"images/{split}-{index:05d}.png"
                render(objects, cfg.image_size, rng.randint(110, 160)).save(tmp / name)
                for kind, rows in scene_records(name, objects, counted, rng).items():
                    records[kind] += rows
            for kind, rows in records.items():
                counts[f"{kind}.{split}"] = write_jsonl_gz(tmp / f"{kind}.{split}.jsonl.gz", rows)
    return counts


# Molmo's pointing format: one point, or several numbered ones, coordinates 0-100.
def format_points(points: list[dict], label: str) -> str:
    if len(points) == 1:
        return (f'<point x="{points[0]["x"]:.1f}" y="{points[0]["y"]:.1f}" alt="{label}">'
                f"{label}</point>")
    coords = " ".join(f'x{i}="{p["x"]:.1f}" y{i}="{p["y"]:.1f}"'
                      for i, p in enumerate(points, 1))
    return f'<points {coords} alt="{label}">{label}</points>'


_POINT = re.compile(r'<point\s+x="([\d.]+)"\s+y="([\d.]+)"')
_POINTS = re.compile(r"<points\s+([^>]*)>")
_COORD = re.compile(r'([xy])(\d+)="([\d.]+)"')


def parse_points(text: str) -> list[tuple[float, float]]:
    """Every (x, y) of `<point>` and `<points>` elements in a generated text, in order;
    malformed or out-of-range coordinates (> 100) are dropped."""
    found = []
    for match in re.finditer(rf"{_POINT.pattern}|{_POINTS.pattern}", text):
        if match.group(1) is not None:
            found.append((match.group(1), match.group(2)))
            continue
        coords: dict[str, dict[str, str]] = {}
        for axis, index, value in _COORD.findall(match.group(3)):
            coords.setdefault(index, {})[axis] = value
        found += [(c["x"], c["y"]) for _, c in sorted(coords.items(), key=lambda kv: int(kv[0]))
                  if {"x", "y"} <= set(c)]
    points = []
    for x, y in found:
        try:
            point = (float(x), float(y))
        except ValueError:
            continue
        if 0 <= point[0] <= 100 and 0 <= point[1] <= 100:
            points.append(point)
    return points


def parse_count(text: str) -> int | None:
    """The count a generated answer states: its last number, in digits or as a word."""
    words = re.findall(r"\d+|[a-z]+", text.lower())
    for word in reversed(words):
        if word.isdigit():
            return int(word)
        if word in NUMBER_WORDS:
            return NUMBER_WORDS.index(word)
    return None


# The prompts and answers the model trains on, per kind (Molmo's phrasing, shortened).
def example(kind: str, record: dict) -> tuple[str, str]:
    """(prompt, answer) of one record."""
    if kind == "pixmo_cap":
        return "Describe this image.", record["caption"]
    if kind == "pixmo_points":
        return f"Point to the {record['label']}.", format_points(record["points"],
                                                                 record["label"])
    if kind == "pixmo_count":
        return f"How many {record['label']} are there?", str(record["count"])
    return record["question"], record["answer"]


_REQUIRED = {"pixmo_cap": {"caption"}, "pixmo_points": {"label", "points"},
             "pixmo_count": {"label", "count"}, "vqa": {"question", "answer"}}


def image_path(record: dict, base: Path) -> Path:
    """The local file of a record's `image` (or PixMo's `image_url`), relative to `base`."""
    ref = record.get("image", record.get("image_url"))
    if not isinstance(ref, str) or not ref:
        raise InputError("no image or image_url")
    url = urlparse(ref)
    if url.scheme in ("http", "https", "s3", "gs"):
        raise InputError(f"{ref}: remote image; lmforge downloads nothing at run time, fetch "
                         "the images first and point image at the local files")
    path = Path(url.path if url.scheme == "file" else ref)
    return path if path.is_absolute() else base / path


def read_records(path: str | Path, kind: str) -> list[dict]:
    """A PixMo-style file's records, each checked (fields, types, 0-100 points, the image
    exists); a bad record is an error naming its line. Adds `image_file` (resolved path)."""
    path = Path(path)
    records = []
    for line, record in enumerate(read_jsonl(path), 1):
        where_ = f"{path}: line {line}"
        if not isinstance(record, dict) or not _REQUIRED[kind] <= set(record):
            raise InputError(f"{where_}: a {kind} record needs {sorted(_REQUIRED[kind])}")
        try:
            file = image_path(record, path.parent)
        except InputError as err:
            raise InputError(f"{where_}: {err}") from None
        if not file.is_file():
            raise InputError(f"{where_}: image {file} does not exist")
        for point in record.get("points", []):
            if not (isinstance(point, dict) and all(
                    isinstance(point.get(a), (int, float)) and 0 <= point[a] <= 100
                    for a in "xy")):
                raise InputError(f"{where_}: points need x and y in 0-100, got {point!r}")
        if kind == "pixmo_count" and not (isinstance(record["count"], int)
                                          and record["count"] >= 0):
            raise InputError(f"{where_}: count must be a non-negative integer")
        if kind == "pixmo_points" and not record["points"]:
            raise InputError(f"{where_}: a pointing record needs at least one point")
        records.append({**record, "image_file": str(file)})
    if not records:
        raise InputError(f"{path}: no {kind} records")
    return records


def load_image(path: str | Path) -> np.ndarray:
    """An RGB image as a height × width × 3 uint8 array; unreadable files are clear errors."""
    try:
        with Image.open(path) as image:
            return np.asarray(image.convert("RGB"))
    except (OSError, ValueError) as err:
        raise InputError(f"{path}: not a readable image ({err})") from None


@command("scenes", CFG, SEED, OUT_DIR, outputs=("out_dir",))
def scenes_command(args, job) -> dict:
    """Generated scenes with PixMo-style captions, points, counts and questions."""
    return make_scenes(args.out_dir, args.cfg, args.seed)
