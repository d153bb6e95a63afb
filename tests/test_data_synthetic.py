"""Synthetic data generator: determinism, formats, and texts that are functions of the pixels."""

from __future__ import annotations

import hashlib
import io
import json
import os
import subprocess
import sys
import tarfile

import numpy as np
import pytest
from PIL import Image

from tests.scripts_util import run_script
from vpgtrans_jax.errors import DataError
from vpgtrans_jax.tiny import scenes as synthetic
from vpgtrans_jax.tiny.dataset import generate

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _tree_digest(root: str) -> dict[str, str]:
    out = {}
    for d, _, files in os.walk(root):
        for f in files:
            p = os.path.join(d, f)
            with open(p, "rb") as fh:
                out[os.path.relpath(p, root)] = hashlib.sha256(fh.read()).hexdigest()
    return out


@pytest.fixture(scope="module")
def syn(tmp_path_factory) -> str:
    out = str(tmp_path_factory.mktemp("syn"))
    generate(out, 30, seed=7, image_size=48, shard_size=8)
    return out


def _load(root: str, name: str):
    with open(os.path.join(root, "annotations", name)) as f:
        return json.load(f)


def test_deterministic_per_seed(syn, tmp_path):
    generate(str(tmp_path / "a"), 30, seed=7, image_size=48, shard_size=8)
    generate(str(tmp_path / "b"), 30, seed=8, image_size=48, shard_size=8)
    same, other = _tree_digest(str(tmp_path / "a")), _tree_digest(str(tmp_path / "b"))
    assert same == _tree_digest(syn)
    assert same.keys() == other.keys()
    changed = [k for k in same if same[k] != other[k]]
    assert "annotations/caption_train.json" in changed and "images/train/000000.jpg" in changed


def _palette_name(rgb: np.ndarray, palette: dict[str, tuple[int, int, int]]) -> str:
    names = list(palette)
    d = [np.abs(rgb - np.asarray(palette[n])).sum() for n in names]
    return names[int(np.argmin(d))]


def test_image_shows_what_the_scene_says():
    """Decode each rendered image and read colours/sizes/positions back from the pixels."""
    for i in range(20):
        rng = np.random.default_rng([3, i])
        scene = synthetic.sample_scene(rng, max_objects=4)
        img = Image.open(io.BytesIO(synthetic.encode_jpeg(synthetic.render(scene, 96, rng))))
        x = np.asarray(img.convert("RGB"), np.float32)
        bg = np.asarray(synthetic.BACKGROUNDS[scene.background], np.float32)
        assert _palette_name(np.median(x.reshape(-1, 3), 0), synthetic.BACKGROUNDS) == (
            scene.background
        )
        by_cell = {o.cell: o for o in scene.objects}
        areas = {}
        for cell in range(9):
            r, c = divmod(cell, 3)
            patch = x[r * 32 : (r + 1) * 32, c * 32 : (c + 1) * 32].reshape(-1, 3)
            fg = patch[np.abs(patch - bg).sum(-1) > 90]
            if cell not in by_cell:
                assert len(fg) < 10, (i, cell, len(fg))
                continue
            obj = by_cell[cell]
            assert _palette_name(fg.mean(0), synthetic.COLORS) == obj.color, (i, cell)
            areas[cell] = len(fg)
        small = [a for c, a in areas.items() if by_cell[c].size == "small"]
        large = [a for c, a in areas.items() if by_cell[c].size == "large"]
        if small and large:
            assert max(small) < min(large)


def test_texts_depend_only_on_the_scene():
    scene = synthetic.Scene(
        "white",
        (
            synthetic.SceneObject("circle", "red", "large", 0),
            synthetic.SceneObject("square", "blue", "small", 4),
            synthetic.SceneObject("square", "blue", "small", 8),
        ),
    )
    caps = synthetic.captions(scene)
    assert caps[0] == "a large red circle and two small blue squares on a white background"
    assert caps[2] == "three shapes on a white background"
    assert caps[3] == (
        "a red circle at the top left, a blue square in the center and a blue square at the "
        "bottom right"
    )
    assert "At the top left there is a large red circle." in synthetic.description(scene)
    for seed in range(30):  # every generated answer is true of the scene
        for qa in synthetic.questions(scene, np.random.default_rng(seed), num=6):
            if qa.question.startswith("How many"):
                words = qa.question.split()
                color, shape = words[2], words[3][:-1]
                n = sum((o.color, o.shape) == (color, shape) for o in scene.objects)
                assert qa.answer == str(n)
            elif qa.question.startswith("Is there"):
                color, shape = qa.question.split()[3:5]
                yes = any((o.color, o.shape) == (color, shape) for o in scene.objects)
                assert qa.answer == ("yes" if yes else "no")
            elif qa.question == "What color is the background?":
                assert qa.answer == "white"
            elif qa.question.startswith("What color is the"):
                assert (qa.question, qa.answer) == ("What color is the circle?", "red")
            elif qa.question.startswith("Where"):
                assert (qa.question, qa.answer) == ("Where is the red circle?", "top left")
            else:
                assert qa.question.startswith("What shape") and qa.answer == "circle"


def test_caption_and_vqa_formats(syn):
    train, val = _load(syn, "caption_train.json"), _load(syn, "caption_val.json")
    assert len(train) == 24 * 5 and all(isinstance(r["caption"], str) for r in train)
    assert len(val) == 3 and all(len(r["caption"]) == 5 for r in val)
    for r in train[:5] + val:
        assert os.path.isfile(os.path.join(syn, "images", r["image"]))
    gt = _load(syn, "caption_val_gt.json")
    assert {im["id"] for im in gt["images"]} == {r["image_id"] for r in val}
    assert len(gt["annotations"]) == 15
    assert len({a["id"] for a in gt["annotations"]}) == 15
    qs, ans = _load(syn, "vqa_val_questions.json"), _load(syn, "vqa_val_annotations.json")
    assert [q["question_id"] for q in qs["questions"]] == [
        a["question_id"] for a in ans["annotations"]
    ]
    for a in ans["annotations"]:
        answers = [x["answer"] for x in a["answers"]]
        assert len(answers) == 10 and answers.count(a["multiple_choice_answer"]) >= 7
    gqa = _load(syn, "gqa_val_questions.json")
    assert set(gqa) == {str(q["question_id"]) for q in qs["questions"]}
    for v in gqa.values():
        assert os.path.isfile(os.path.join(syn, "images", "val", v["imageId"] + ".jpg"))


def test_cc_sbu_and_webdataset(syn):
    with open(os.path.join(syn, "cc_sbu_align", "filter_cap.json")) as f:
        anns = json.load(f)["annotations"]
    assert len(anns) == 24
    for a in anns:
        assert os.path.isfile(os.path.join(syn, "cc_sbu_align", "image", a["image_id"] + ".jpg"))
        assert a["caption"].startswith("The image shows")
    shards = sorted(os.listdir(os.path.join(syn, "webdataset")))
    assert shards == ["train-00000.tar", "train-00001.tar", "train-00002.tar"]
    with tarfile.open(os.path.join(syn, "webdataset", shards[0])) as tar:
        names = tar.getnames()
        assert names[:3] == ["000000.jpg", "000000.txt", "000000.json"] and len(names) == 24
        caption = tar.extractfile("000000.txt").read().decode()
    assert caption == _load(syn, "caption_train.json")[0]["caption"]


def test_tokenizer(syn):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(os.path.join(syn, "tokenizer"))
    assert (tok.pad_token_id, tok.bos_token_id, tok.eos_token_id) == (0, 1, 2)
    nl = tok("\n", add_special_tokens=False).input_ids
    assert len(nl) == 1
    ids = tok("a red circle\n").input_ids
    assert ids[0] == tok.bos_token_id and ids[-1] == nl[0]
    assert tok.decode(ids, skip_special_tokens=True) == "a red circle\n"


def test_script_help_and_run(tmp_path):
    script = os.path.join(ROOT, "scripts", "make_synthetic_data.py")
    r = subprocess.run([sys.executable, script, "--help"], capture_output=True, text=True)
    assert r.returncode == 0 and "--num_images" in r.stdout
    out = tmp_path / "s"
    cmd = [sys.executable, script, "--out", str(out), "--num_images", "4", "--image_size", "32"]
    r = subprocess.run(cmd + ["--no_tokenizer"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["splits"]["train"]["images"] == 2 and not (out / "tokenizer").exists()
    r = subprocess.run(cmd[:-2] + ["--num_images", "0"], capture_output=True, text=True)
    assert r.returncode != 0 and "num_images must be >= 1" in r.stderr


def test_rerun_into_the_same_directory_leaves_no_stale_files(tmp_path):
    out = str(tmp_path / "syn")
    generate(out, 12, seed=1, image_size=32, shard_size=2, write_tokenizer=False)
    assert len(os.listdir(os.path.join(out, "webdataset"))) == 5  # 10 train images
    # The same directory again, fewer and larger shards: only the new run's files remain.
    generate(out, 12, seed=1, image_size=32, shard_size=100, write_tokenizer=False)
    assert os.listdir(os.path.join(out, "webdataset")) == ["train-00000.tar"]
    fresh = str(tmp_path / "fresh")
    generate(fresh, 12, seed=1, image_size=32, shard_size=100, write_tokenizer=False)
    assert _tree_digest(out) == _tree_digest(fresh)
    assert not [n for n in os.listdir(tmp_path) if n.startswith(".")]  # no temporaries left


def test_a_foreign_non_empty_directory_is_refused_untouched(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(DataError, match=r"is not empty and not a synthetic dataset .*notes\.txt"):
        generate(str(tmp_path), 6, image_size=32, write_tokenizer=False)
    assert os.listdir(tmp_path) == ["notes.txt"]
    # A file of the user's inside an earlier dataset makes it foreign too.
    out = tmp_path / "syn"
    generate(str(out), 6, image_size=32, write_tokenizer=False)
    (out / "mine.json").write_text("{}")
    with pytest.raises(DataError, match="mine.json"):
        generate(str(out), 6, image_size=32, write_tokenizer=False)
    assert (out / "mine.json").exists()


def test_output_directories_have_normal_permissions(tmp_path):
    old = os.umask(0o022)
    try:
        generate(str(tmp_path / "syn"), 6, image_size=32, write_tokenizer=False)
    finally:
        os.umask(old)
    for d, _, _ in os.walk(tmp_path / "syn"):
        assert os.stat(d).st_mode & 0o777 == 0o755, d


@pytest.mark.parametrize(
    "args, message",
    [
        (["--image_size=0"], "image_size must be >= 16, got 0"),
        (["--image_size=-5"], "image_size must be >= 16"),
        (["--max_objects=0"], "max_objects must be >= 1"),
        (["--max_objects=20"], "max_objects must be <= 9"),
        (["--val_fraction=2"], "val_fraction must be in [0, 1)"),
        (["--val_fraction=-0.5"], "val_fraction must be in [0, 1)"),
        (["--questions_per_image=-1"], "questions_per_image must be >= 1"),
        (["--vocab_size=3"], "vocab_size must be >= 260"),
        (["--shard_size=0"], "shard_size must be >= 1"),
        (["--seed=-1"], "seed must be >= 0"),
        (["--num_images=abc"], "flag --num_images=abc"),
        (["--out=FILE"], "is a file"),
    ],
)
def test_script_bad_arguments_are_one_error_line(args, message, tmp_path):
    (tmp_path / "file").write_text("x")
    args = [a.replace("FILE", str(tmp_path / "file")) for a in args]
    out = run_script(
        "scripts/make_synthetic_data.py", f"--out={tmp_path / 's'}", "--num_images=6", *args
    )
    assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], lines
    assert not (tmp_path / "s").exists()
