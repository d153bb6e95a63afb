"""scripts/chat.py answers questions about an image with a loaded model."""

from __future__ import annotations

import importlib.util
import os

from tests import torch_reference as F
from vpgtrans_jax.tiny import dataset as synthetic_export

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_chat_answers_each_question(tmp_path, capsys):
    data = tmp_path / "data"
    synthetic_export.generate(str(data), num_images=8, seed=0, image_size=32)
    model = F.tiny_blip2("opt", vocab_size=512)
    model.save_pretrained(tmp_path / "model")
    image = data / "images" / "train" / sorted(os.listdir(data / "images" / "train"))[0]

    spec = importlib.util.spec_from_file_location("chat", os.path.join(REPO, "scripts", "chat.py"))
    chat = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(chat)
    rc = chat.main(
        [
            f"--checkpoint={tmp_path / 'model'}",
            f"--tokenizer={data / 'tokenizer'}",
            f"--image={image}",
            "--ask=",
            "--ask=what colour is the circle?",
            "--num_beams=2",
            "--max_new_tokens=4",
        ]
    )
    out = capsys.readouterr().out.splitlines()
    assert rc == 0 and len(out) == 2
    # A stage-3 chat model's template: image at <ImageHere>, answers end at "###".
    rc = chat.main(
        [
            f"--checkpoint={tmp_path / 'model'}",
            f"--tokenizer={data / 'tokenizer'}",
            f"--image={image}",
            "--template=###Human: <Img><ImageHere></Img> {} ###Assistant: ",
            "--end=###",
            "--ask=",
            "--ask=what colour is the circle?",
            "--num_beams=2",
            "--max_new_tokens=4",
        ]
    )
    out = capsys.readouterr().out.splitlines()
    assert rc == 0 and len(out) == 2 and not any("###" in line for line in out)
