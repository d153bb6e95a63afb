"""LAVIS processors on numpy/PIL, checked against hand-worked examples."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image, ImageFile

from vpgtrans_jax.data import processors as P
from vpgtrans_jax.errors import DataError


class ScriptedRng:
    """Stands in for np.random.Generator with pre-chosen draws (fractions of each range)."""

    def __init__(self, uniform=(), integers=(), random=()):
        self._u, self._i, self._r = list(uniform), list(integers), list(random)

    def uniform(self, lo, hi):
        return lo + self._u.pop(0) * (hi - lo)

    def integers(self, lo, hi):
        v = self._i.pop(0)
        assert lo <= v < hi, (lo, v, hi)
        return v

    def random(self):
        return self._r.pop(0)


def _png(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def test_normalisation_by_hand():
    img = Image.fromarray(np.array([[[0, 128, 255]]], np.uint8))
    out = P.to_normalized_array(img)
    want = [
        (0 / 255 - 0.48145466) / 0.26862954,  # -1.79226...
        (128 / 255 - 0.4578275) / 0.26130258,  # 0.16890...
        (255 / 255 - 0.40821073) / 0.27577711,  # 2.14590...
    ]
    assert out.dtype == np.float32 and out.shape == (1, 1, 3)
    np.testing.assert_allclose(out[0, 0], want, atol=1e-6)
    np.testing.assert_allclose(out[0, 0], [-1.7922626, 0.1688973, 2.1458974], atol=1e-6)


def test_crop_params_by_hand():
    # area fraction 0.5 + 0.28*0.5 = 0.64, log-aspect at the midpoint -> aspect 1 -> 80x80.
    rng = ScriptedRng(uniform=[0.28, 0.5], integers=[5, 7])
    assert P.random_resized_crop_params(100, 100, rng) == (5, 7, 80, 80)
    # aspect 4/3 at full area: w = round(sqrt(1e4 * 4/3)) = 115 > 100, rejected 10 times ->
    # fallback: square image keeps everything; a 100x300 one gets the centred 4:3 crop.
    never_fits = [1.0, 1.0] * 10
    assert P.random_resized_crop_params(100, 100, ScriptedRng(never_fits)) == (0, 0, 100, 100)
    assert P.random_resized_crop_params(100, 300, ScriptedRng(never_fits)) == (0, 83, 100, 133)
    assert P.random_resized_crop_params(300, 100, ScriptedRng(never_fits)) == (83, 0, 133, 100)


def test_train_transform_crops_flips_and_resizes():
    # Left half red, right half blue; crop = left 50x50 quadrant of the top half.
    arr = np.zeros((100, 100, 3), np.uint8)
    arr[:, :50] = (255, 0, 0)
    arr[:, 50:] = (0, 0, 255)
    # area 0.25 of 1e4 is below scale min, so use 0.5: w=h=round(sqrt(5000))=71 at (0, 0).
    rng = ScriptedRng(uniform=[0.0, 0.5], integers=[0, 0], random=[0.9])
    out = P.blip2_image_train(_png(arr), rng, image_size=8)
    want = Image.fromarray(arr).crop((0, 0, 71, 71)).resize((8, 8), Image.Resampling.BICUBIC)
    np.testing.assert_allclose(out, P.to_normalized_array(want), atol=1e-6)
    red = P.to_normalized_array(Image.new("RGB", (1, 1), (255, 0, 0)))[0, 0]
    np.testing.assert_allclose(out[:, 0], np.broadcast_to(red, (8, 3)), atol=1e-5)
    # Same draws but flip (0.1 < 0.5): columns mirrored, red now on the right edge.
    rng = ScriptedRng(uniform=[0.0, 0.5], integers=[0, 0], random=[0.1])
    flipped = P.blip2_image_train(_png(arr), rng, image_size=8)
    np.testing.assert_allclose(flipped, out[:, ::-1], atol=1e-6)


def test_train_transform_deterministic_per_seed():
    arr = np.random.default_rng(0).integers(0, 256, (40, 60, 3), dtype=np.uint8)
    a = P.blip2_image_train(_png(arr), np.random.default_rng(1), image_size=16)
    b = P.blip2_image_train(_png(arr), np.random.default_rng(1), image_size=16)
    c = P.blip2_image_train(_png(arr), np.random.default_rng(2), image_size=16)
    assert a.shape == (16, 16, 3) and a.dtype == np.float32
    np.testing.assert_array_equal(a, b)
    assert np.abs(a - c).max() > 0.1


def test_eval_transform():
    arr = np.full((10, 20, 3), (10, 200, 30), np.uint8)
    out = P.blip_image_eval(_png(arr), image_size=4)
    want = P.to_normalized_array(Image.new("RGB", (1, 1), (10, 200, 30)))[0, 0]
    assert out.shape == (4, 4, 3)
    np.testing.assert_allclose(out, np.broadcast_to(want, (4, 4, 3)), atol=1e-5)
    grey = Image.fromarray(np.arange(16, dtype=np.uint8).reshape(4, 4) * 16).convert("L")
    out = P.blip_image_eval(grey, image_size=4)  # greyscale -> RGB, size kept
    np.testing.assert_allclose(
        out[..., 0],
        (np.arange(16).reshape(4, 4) * 16 / 255 - P.CLIP_MEAN[0]) / P.CLIP_STD[0],
        atol=1e-5,
    )


def bomb_png(width: int = 13000, height: int = 13000) -> bytes:
    """A PNG of a few hundred bytes whose header claims ``width`` x ``height`` RGB pixels (a
    decompression bomb: decoding it would take width * height * 3 bytes)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    rows = zlib.compress(b"\x00" * (1 + 3 * width) * 2)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", rows) + chunk(b"IEND", b"")


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
def test_images_over_the_pixel_limit_are_refused_before_decoding(tmp_path, monkeypatch):
    decoded = []
    real_load = ImageFile.ImageFile.load

    def spy(self):
        decoded.append(self.size)
        return real_load(self)

    monkeypatch.setattr(ImageFile.ImageFile, "load", spy)
    path = tmp_path / "bomb.png"
    path.write_bytes(bomb_png())
    assert path.stat().st_size < 2000 and Image.open(path).size == (13000, 13000)
    for image in (str(path), path.read_bytes()):
        with pytest.raises(DataError, match=r"13000x13000 = 169000000 pixels, more than "):
            P.load_image(image)
        with pytest.raises(DataError, match="max_image_pixels=1000"):
            P.blip_image_eval(image, 8, max_pixels=1000)
    assert decoded == []  # refused from the header: no pixel was decoded
    small = _png(np.zeros((40, 30, 3), np.uint8))
    assert P.load_image(small, max_pixels=1200).size == (30, 40)  # the limit itself is fine
    with pytest.raises(DataError, match="1200 pixels, more than max_image_pixels=1199"):
        P.load_image(small, max_pixels=1199)
    assert set(decoded) == {(30, 40)}


def test_load_image_errors(tmp_path):
    with pytest.raises(FileNotFoundError):
        P.load_image(str(tmp_path / "missing.jpg"))
    with pytest.raises(OSError):
        P.load_image(b"not an image")
    truncated = _png(np.zeros((64, 64, 3), np.uint8))[:60]
    with pytest.raises(OSError):
        P.load_image(truncated)
    with pytest.raises(TypeError, match="image must be bytes"):
        P.load_image(3)


@pytest.mark.parametrize(
    "raw, want",
    [
        ("A Man (riding) a horse!!  On   the beach.\n", "a man riding a horse on the beach"),
        ("Two dogs: one~black; one*white#", "two dogs one black one white"),
        ("it's a \"cat\", isn't it?", "it's a cat , isn't it?"),
        ("a\tb", "a\tb"),  # single non-space whitespace is not collapsed (as in LAVIS)
        ("   ", ""),
    ],
)
def test_blip_caption(raw, want):
    assert P.blip_caption(raw) == want


def test_blip_caption_truncation_and_prompt():
    words = " ".join(f"w{i}" for i in range(60))
    assert P.blip_caption(words) == " ".join(f"w{i}" for i in range(50))
    assert P.blip_caption("A dog.", max_words=1, prompt="a photo of ") == "a photo of a"


@pytest.mark.parametrize(
    "raw, want",
    [
        ('What is the man "holding"?  ', "what is the man holding?"),
        ("How  many: dogs.", "how  many dogs"),  # punctuation deleted, inner spaces kept
        ("Is it (really) red!", "is it really red"),
    ],
)
def test_blip_question(raw, want):
    assert P.blip_question(raw) == want


def test_blip_question_truncation():
    q = " ".join(["why"] * 55) + "?"
    assert P.blip_question(q, max_words=50) == " ".join(["why"] * 50)
