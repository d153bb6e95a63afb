"""Synthetic scenes of simple shapes, rendered with PIL, and texts that are functions of them.

A scene is a background colour plus 1..``max_objects`` objects, each with a shape, a colour, a
size and a cell of a 3x3 grid (one object per cell, so objects never overlap and every position
word is unambiguous). Every caption, question answer and long description below is computed
from the scene alone, so a model can learn them from the pixels. Randomness only picks the scene
(and which of several equally true phrasings/questions to emit), always from a seeded
``np.random.Generator``, so the output is deterministic per seed.
"""

from __future__ import annotations

import dataclasses
import io

import numpy as np
from PIL import Image, ImageDraw

SHAPES = ("circle", "square", "triangle")
COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 220),
    "yellow": (240, 210, 40),
    "purple": (140, 60, 180),
    "orange": (245, 140, 30),
}
SIZES = ("small", "large")
BACKGROUNDS: dict[str, tuple[int, int, int]] = {
    "white": (245, 245, 245),
    "gray": (128, 128, 128),
    "black": (20, 20, 20),
}
# Row-major 3x3 grid; names are what captions and answers say.
CELLS = (
    "top left",
    "top",
    "top right",
    "left",
    "center",
    "right",
    "bottom left",
    "bottom",
    "bottom right",
)
NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
_RADIUS = {"small": 0.2, "large": 0.4}  # fraction of a cell's side


@dataclasses.dataclass(frozen=True)
class SceneObject:
    """One object: shape, colour name, size name and grid cell index (0..8, row-major)."""

    shape: str
    color: str
    size: str
    cell: int

    @property
    def position(self) -> str:
        return CELLS[self.cell]


@dataclasses.dataclass(frozen=True)
class Scene:
    """A background colour name and objects sorted by cell (reading order)."""

    background: str
    objects: tuple[SceneObject, ...]


def sample_scene(rng: np.random.Generator, max_objects: int = 4) -> Scene:
    """Draws a scene with 1..max_objects objects in distinct cells."""
    if not 1 <= max_objects <= len(CELLS):
        raise ValueError(f"max_objects must be in [1, {len(CELLS)}], got {max_objects}")
    n = int(rng.integers(1, max_objects + 1))
    cells = sorted(int(c) for c in rng.choice(len(CELLS), size=n, replace=False))
    colors = list(COLORS)
    objects = tuple(
        SceneObject(
            shape=SHAPES[int(rng.integers(len(SHAPES)))],
            color=colors[int(rng.integers(len(colors)))],
            size=SIZES[int(rng.integers(len(SIZES)))],
            cell=c,
        )
        for c in cells
    )
    return Scene(background=list(BACKGROUNDS)[int(rng.integers(len(BACKGROUNDS)))], objects=objects)


def render(scene: Scene, size: int, rng: np.random.Generator) -> Image.Image:
    """Draws ``scene`` as an RGB image of ``size`` x ``size`` pixels.

    Positions jitter by up to 10% of a cell and colours by +-12 per channel, so images differ
    while every attribute stays readable.
    """
    img = Image.new("RGB", (size, size), BACKGROUNDS[scene.background])
    draw = ImageDraw.Draw(img)
    cell = size / 3.0
    for obj in scene.objects:
        row, col = divmod(obj.cell, 3)
        cx = (col + 0.5 + rng.uniform(-0.1, 0.1)) * cell
        cy = (row + 0.5 + rng.uniform(-0.1, 0.1)) * cell
        r = _RADIUS[obj.size] * cell
        jitter = rng.integers(-12, 13, size=3)
        fill = tuple(int(np.clip(c + j, 0, 255)) for c, j in zip(COLORS[obj.color], jitter))
        if obj.shape == "circle":
            draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=fill)
        elif obj.shape == "square":
            draw.rectangle((cx - r, cy - r, cx + r, cy + r), fill=fill)
        else:
            draw.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=fill)
    return img


def encode_jpeg(img: Image.Image, quality: int = 90) -> bytes:
    """Encodes a PIL image as JPEG bytes."""
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


# ----------------------------------------------------------------------------- text


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def _plural(shape: str) -> str:
    return shape + "s"


def _noun_phrase(count: int, words: tuple[str, ...], shape: str) -> str:
    """``a large red circle`` / ``two small blue squares``."""
    adj = " ".join(words)
    head = f"{adj} {shape}" if count == 1 else f"{adj} {_plural(shape)}"
    head = head.strip()
    return f"{_article(head)} {head}" if count == 1 else f"{NUMBER_WORDS[count]} {head}"


def _join(parts: list[str]) -> str:
    return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]


def _groups(scene: Scene, with_size: bool) -> list[tuple[int, tuple[str, ...], str]]:
    """Groups objects by (size?, colour, shape) in reading order of first appearance."""
    counts: dict[tuple[tuple[str, ...], str], int] = {}
    for obj in scene.objects:
        words = (obj.size, obj.color) if with_size else (obj.color,)
        counts[(words, obj.shape)] = counts.get((words, obj.shape), 0) + 1
    return [(n, words, shape) for (words, shape), n in counts.items()]


def object_list(scene: Scene, with_size: bool = True) -> str:
    """``a large red circle and two small blue squares``."""
    return _join([_noun_phrase(n, w, s) for n, w, s in _groups(scene, with_size)])


def where(obj: SceneObject) -> str:
    """``in the center`` / ``on the left`` / ``at the top right``."""
    if obj.position == "center":
        return "in the center"
    return (
        f"on the {obj.position}" if obj.position in ("left", "right") else f"at the {obj.position}"
    )


def captions(scene: Scene) -> list[str]:
    """Five true captions of the scene (like COCO's five references); the first is canonical."""
    n = len(scene.objects)
    things = "shape" if n == 1 else "shapes"
    located = _join([f"{_noun_phrase(1, (o.color,), o.shape)} {where(o)}" for o in scene.objects])
    return [
        f"{object_list(scene)} on a {scene.background} background",
        f"a picture of {object_list(scene, with_size=False)}",
        f"{NUMBER_WORDS[n]} {things} on a {scene.background} background",
        located,
        f"an image showing {object_list(scene, with_size=False)} on {scene.background}",
    ]


def description(scene: Scene) -> str:
    """A long, multi-sentence description (cc_sbu_align style) of the scene."""
    n = len(scene.objects)
    noun = "object" if n == 1 else "objects"
    out = [f"The image shows {NUMBER_WORDS[n]} {noun} on a plain {scene.background} background."]
    for obj in scene.objects:
        thing = _noun_phrase(1, (obj.size, obj.color), obj.shape)
        out.append(f"{where(obj).capitalize()} there is {thing}.")
    shapes = sorted({o.shape for o in scene.objects})
    out.append(f"The shapes in the picture are: {', '.join(_plural(s) for s in shapes)}.")
    return " ".join(out)


@dataclasses.dataclass(frozen=True)
class QA:
    """A question about a scene with its answer and VQA-style type fields."""

    question: str
    answer: str
    answer_type: str  # "yes/no" | "number" | "other"
    question_type: str  # first words, as in VQAv2 ("how many", "is there a", ...)
    full_answer: str  # GQA-style full-sentence answer


def _count_qa(scene: Scene, rng: np.random.Generator) -> QA:
    if rng.random() < 0.8:  # mostly ask about something that is there
        obj = scene.objects[int(rng.integers(len(scene.objects)))]
        color, shape = obj.color, obj.shape
    else:
        color, shape = list(COLORS)[int(rng.integers(len(COLORS)))], SHAPES[int(rng.integers(3))]
    n = sum(1 for o in scene.objects if (o.color, o.shape) == (color, shape))
    verb = "is" if n == 1 else "are"
    full = f"There {verb} {NUMBER_WORDS[n]} {color} {shape if n == 1 else _plural(shape)}."
    q = f"How many {color} {_plural(shape)} are there?"
    return QA(q, str(n), "number", "how many", full)


def _exists_qa(scene: Scene, rng: np.random.Generator) -> QA:
    color, shape = list(COLORS)[int(rng.integers(len(COLORS)))], SHAPES[int(rng.integers(3))]
    if rng.random() < 0.5:  # balance yes / no
        obj = scene.objects[int(rng.integers(len(scene.objects)))]
        color, shape = obj.color, obj.shape
    yes = any((o.color, o.shape) == (color, shape) for o in scene.objects)
    phrase = f"{_article(color)} {color} {shape}"
    full = f"Yes, there is {phrase}." if yes else f"No, there is no {color} {shape}."
    return QA(
        f"Is there {phrase} in the image?", "yes" if yes else "no", "yes/no", "is there a", full
    )


def _attribute_qa(scene: Scene, rng: np.random.Generator) -> QA:
    obj = scene.objects[int(rng.integers(len(scene.objects)))]
    same_shape = [o for o in scene.objects if o.shape == obj.shape]
    same_color = [o for o in scene.objects if o.color == obj.color]
    options = ["background", "where"]
    if len(same_shape) == 1:
        options.append("color")
    if len(same_color) == 1:
        options.append("shape")
    kind = options[int(rng.integers(len(options)))]
    if kind == "color":
        q, a = f"What color is the {obj.shape}?", obj.color
        return QA(q, a, "other", "what color is the", f"The {obj.shape} is {a}.")
    if kind == "shape":
        q, a = f"What shape is the {obj.color} object?", obj.shape
        return QA(q, a, "other", "what", f"The {obj.color} object is a {a}.")
    if (
        kind == "where"
        and sum(1 for o in scene.objects if (o.color, o.shape) == (obj.color, obj.shape)) == 1
    ):
        q, a = f"Where is the {obj.color} {obj.shape}?", obj.position
        return QA(q, a, "other", "where is the", f"The {obj.color} {obj.shape} is {where(obj)}.")
    q, a = "What color is the background?", scene.background
    return QA(q, a, "other", "what color is the", f"The background is {a}.")


def questions(scene: Scene, rng: np.random.Generator, num: int = 3) -> list[QA]:
    """``num`` questions cycling through count / existence / attribute kinds."""
    makers = (_count_qa, _exists_qa, _attribute_qa)
    start = int(rng.integers(len(makers)))
    return [makers[(start + k) % len(makers)](scene, rng) for k in range(num)]


def annotator_answers(qa: QA, rng: np.random.Generator, num: int = 10) -> list[str]:
    """``num`` human-style answers to ``qa``.

    Like real annotators, a few of the last three write numbers as words ("two" for "2"); at
    least ``num - 3`` answers are always the canonical one, so the canonical prediction scores
    100 under the official VQA metric (every leave-one-out subset keeps >= 3 matches).
    """
    out = [qa.answer] * num
    if qa.answer_type == "number":
        for k in range(max(0, num - 3), num):
            if rng.random() < 0.5:
                out[k] = NUMBER_WORDS[int(qa.answer)]
    return out
