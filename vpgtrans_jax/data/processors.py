"""LAVIS image and text processors on numpy/PIL (no torch).

Same semantics as LAVIS ``blip2_image_train``, ``blip_image_eval``, ``blip_caption`` and
``blip_question`` (torchvision's RandomResizedCrop / RandomHorizontalFlip / Resize, bicubic, on
PIL images). Randomness comes from a ``np.random.Generator`` the caller passes in (grain's
``random_map`` derives one per element from the pipeline seed), so results are deterministic
per seed. Images come out as ``float32[H, W, 3]`` normalised with the CLIP mean/std (NHWC).
"""

from __future__ import annotations

import io
import math
import re

import numpy as np
from PIL import Image

from vpgtrans_jax import paths
from vpgtrans_jax.errors import DataError

# Largest image decoded (width x height), as config.data.max_image_pixels defaults it: 50 MP is
# 150 MB of RGB. PIL reads the size from the header, so a larger one is refused for free.
MAX_IMAGE_PIXELS = 50_000_000
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
_PUNCT = re.compile(r"([.!\"()*#:;~])")
_MULTI_SPACE = re.compile(r"\s{2,}")


def load_image(data: bytes | str | Image.Image, max_pixels: int = MAX_IMAGE_PIXELS) -> Image.Image:
    """Decodes encoded bytes, opens a path, or takes a PIL image; returns it as RGB.

    An image of more than ``max_pixels`` pixels is refused (DataError) from the size in its
    header, before any pixel is decoded: a PNG of a few hundred KB can claim 13000 x 13000 and
    take gigabytes to decode. Raises whatever PIL raises for missing/corrupt files (the
    pipeline counts those as bad).
    """
    if isinstance(data, Image.Image):
        img = data
    elif isinstance(data, bytes | bytearray | memoryview):
        img = Image.open(io.BytesIO(bytes(data)))
    elif isinstance(data, str):  # a file path or a URL (gs://...)
        img = Image.open(io.BytesIO(paths.read_bytes(data)) if paths.is_remote(data) else data)
    else:
        raise TypeError(f"image must be bytes, a path or a PIL image, got {type(data).__name__}")
    w, h = img.size
    if w * h > max_pixels:
        name = f"{data} " if isinstance(data, str) else ""
        raise DataError(
            f"image {name}is {w}x{h} = {w * h} pixels, more than max_image_pixels={max_pixels}; "
            "refused before decoding"
        )
    img.load()  # decode now so truncated files fail here, not later
    return img.convert("RGB")


def to_normalized_array(
    img: Image.Image, mean: tuple[float, ...] = CLIP_MEAN, std: tuple[float, ...] = CLIP_STD
) -> np.ndarray:
    """ToTensor + Normalize: ``uint8`` RGB -> ``float32[H, W, 3]`` ``(x / 255 - mean) / std``."""
    x = np.asarray(img, dtype=np.float32)
    scale = np.float32(1.0 / 255.0) / np.asarray(std, np.float32)
    offset = np.asarray(mean, np.float32) / np.asarray(std, np.float32)
    return x * scale - offset


def random_resized_crop_params(
    height: int,
    width: int,
    rng: np.random.Generator,
    scale: tuple[float, float] = (0.5, 1.0),
    ratio: tuple[float, float] = (3.0 / 4.0, 4.0 / 3.0),
) -> tuple[int, int, int, int]:
    """torchvision ``RandomResizedCrop.get_params``: returns ``(top, left, h, w)``.

    Ten tries at an area fraction ~ U(scale) and log-aspect ~ U(log ratio); if none fits, the
    largest centred crop with aspect clamped to ``ratio``.
    """
    area = height * width
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    for _ in range(10):
        target_area = area * rng.uniform(scale[0], scale[1])
        aspect = math.exp(rng.uniform(log_lo, log_hi))
        w = int(round(math.sqrt(target_area * aspect)))
        h = int(round(math.sqrt(target_area / aspect)))
        if 0 < w <= width and 0 < h <= height:
            top = int(rng.integers(0, height - h + 1))
            left = int(rng.integers(0, width - w + 1))
            return top, left, h, w
    in_ratio = width / height
    if in_ratio < min(ratio):
        w, h = width, int(round(width / min(ratio)))
    elif in_ratio > max(ratio):
        h, w = height, int(round(height * max(ratio)))
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


def blip2_image_train(
    image: bytes | str | Image.Image,
    rng: np.random.Generator,
    image_size: int = 224,
    min_scale: float = 0.5,
    max_scale: float = 1.0,
    flip_prob: float = 0.5,
    max_pixels: int = MAX_IMAGE_PIXELS,
) -> np.ndarray:
    """RandomResizedCrop(image_size, scale=(min_scale, max_scale), bicubic) -> flip -> normalise.

    ``flip_prob`` is 0.5 in LAVIS; set 0 when captions name left/right (the synthetic data's
    position captions). Returns ``float32[image_size, image_size, 3]``.
    """
    img = load_image(image, max_pixels)
    top, left, h, w = random_resized_crop_params(img.height, img.width, rng, (min_scale, max_scale))
    # torchvision crops, then resizes the crop (bicubic, antialiased as PIL always is).
    img = img.crop((left, top, left + w, top + h)).resize(
        (image_size, image_size), Image.Resampling.BICUBIC
    )
    if rng.random() < flip_prob:
        img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    return to_normalized_array(img)


def blip_image_eval(
    image: bytes | str | Image.Image, image_size: int = 224, max_pixels: int = MAX_IMAGE_PIXELS
) -> np.ndarray:
    """Bicubic resize to ``image_size`` x ``image_size`` -> normalise; ``float32[S, S, 3]``."""
    img = load_image(image, max_pixels)
    if img.size != (image_size, image_size):
        img = img.resize((image_size, image_size), Image.Resampling.BICUBIC)
    return to_normalized_array(img)


def blip_caption(caption: str, max_words: int = 50, prompt: str = "") -> str:
    """LAVIS ``BlipCaptionProcessor``: lowercase, punctuation ``.!"()*#:;~`` -> space, runs of 2+
    whitespace -> one space, strip trailing newlines and surrounding spaces, keep ``max_words``
    space-separated words; ``prompt`` is prepended afterwards.
    """
    caption = _PUNCT.sub(" ", caption.lower())
    caption = _MULTI_SPACE.sub(" ", caption)
    caption = caption.rstrip("\n").strip(" ")
    words = caption.split(" ")
    if len(words) > max_words:
        caption = " ".join(words[:max_words])
    return prompt + caption


def blip_question(question: str, max_words: int = 50) -> str:
    """LAVIS ``BlipQuestionProcessor``: lowercase, delete ``.!"()*#:;~``, strip trailing spaces,
    keep ``max_words`` space-separated words. (Unlike captions, inner whitespace is kept as is.)
    """
    question = _PUNCT.sub("", question.lower()).rstrip(" ")
    words = question.split(" ")
    if len(words) > max_words:
        question = " ".join(words[:max_words])
    return question
