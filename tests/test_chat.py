"""scripts/chat.py answers questions about an image with a loaded model."""

from __future__ import annotations

import os

from tests import torch_reference as F
from tests.scripts_util import run_script
from vpgtrans_jax.tiny import dataset as synthetic_export


def test_chat_answers_each_question(tmp_path):
    data = tmp_path / "data"
    synthetic_export.generate(str(data), num_images=8, seed=0, image_size=32)
    model = F.tiny_blip2("opt", vocab_size=512)
    model.save_pretrained(tmp_path / "model")
    image = data / "images" / "train" / sorted(os.listdir(data / "images" / "train"))[0]

    r = run_script(
        "scripts/chat.py",
        *[
            f"--checkpoint={tmp_path / 'model'}",
            f"--tokenizer={data / 'tokenizer'}",
            f"--image={image}",
            "--ask=",
            "--ask=what colour is the circle?",
            "--num_beams=2",
            "--max_new_tokens=4",
        ],
    )
    out = r.stdout.splitlines()
    assert r.returncode == 0 and len(out) == 2, r.stderr
    # A stage-3 chat model's template: image at <ImageHere>, answers end at "###".
    r = run_script(
        "scripts/chat.py",
        *[
            f"--checkpoint={tmp_path / 'model'}",
            f"--tokenizer={data / 'tokenizer'}",
            f"--image={image}",
            "--template=###Human: <Img><ImageHere></Img> {} ###Assistant: ",
            "--end=###",
            "--ask=",
            "--ask=what colour is the circle?",
            "--num_beams=2",
            "--max_new_tokens=4",
        ],
    )
    out = r.stdout.splitlines()
    assert r.returncode == 0 and len(out) == 2 and not any("###" in line for line in out)
