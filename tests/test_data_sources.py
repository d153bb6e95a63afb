"""Every source on generated data, ArrayRecord conversion, TFDS through mock_data."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from vpgtrans_jax.data import arrayrecord
from vpgtrans_jax.data.processors import load_image
from vpgtrans_jax.data.registry import make_source
from vpgtrans_jax.tiny.dataset import generate

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def syn(tmp_path_factory) -> str:
    out = str(tmp_path_factory.mktemp("syn"))
    generate(out, 25, seed=1, image_size=32, shard_size=7, write_tokenizer=False)
    return out


def _ann(syn: str, name: str) -> str:
    return os.path.join(syn, "annotations", name)


def test_lavis_caption(syn):
    train = make_source(
        "lavis_caption",
        ann_paths=_ann(syn, "caption_train.json"),
        image_root=os.path.join(syn, "images"),
    )
    assert len(train) == 21 * 5
    r = train[0]
    assert r["text"] == r["captions"][0] and r["image_id"] == 0
    assert load_image(r["image_path"]).size == (32, 32)
    val = make_source(
        "lavis_caption",
        ann_paths=[_ann(syn, "caption_val.json"), _ann(syn, "caption_test.json")],
        image_root=os.path.join(syn, "images"),
    )
    assert len(val) == 4 and all(len(val[i]["captions"]) == 5 for i in range(4))


def test_cc_sbu_align(syn):
    src = make_source("cc_sbu_align", root=os.path.join(syn, "cc_sbu_align"))
    assert len(src) == 21
    assert src[3]["text"].startswith("The image shows") and os.path.isfile(src[3]["image_path"])


def test_vqa_and_gqa(syn):
    vqa = make_source(
        "vqa",
        questions_path=_ann(syn, "vqa_val_questions.json"),
        annotations_path=_ann(syn, "vqa_val_annotations.json"),
        image_root=os.path.join(syn, "images", "val"),
        image_pattern="{image_id:06d}.jpg",
    )
    assert len(vqa) == 2 * 3
    r = vqa[0]
    assert len(r["answers"]) == 10 and r["question"].endswith("?")
    assert os.path.isfile(r["image_path"])
    test_dev = make_source(
        "vqa",
        questions_path=_ann(syn, "vqa_val_questions.json"),
        annotations_path=None,
        image_root="x",
    )
    assert test_dev[0]["answers"] == [] and test_dev[0]["image_path"] == os.path.join(
        "x", f"COCO_val2014_{r['image_id']:012d}.jpg"
    )
    gqa = make_source(
        "gqa",
        questions_path=_ann(syn, "gqa_val_questions.json"),
        image_root=os.path.join(syn, "images", "val"),
    )
    assert len(gqa) == 6
    assert {gqa[i]["question_id"] for i in range(6)} == {
        str(vqa[i]["question_id"]) for i in range(6)
    }
    assert gqa[0]["answers"] == [vqa[0]["answers"][0]] and os.path.isfile(gqa[0]["image_path"])


def test_gqa_lavis_list(tmp_path):
    p = tmp_path / "gqa.json"
    p.write_text(
        json.dumps([{"image": "n1.jpg", "question": "q?", "answer": "a", "question_id": 5}])
    )
    src = make_source("gqa", questions_path=str(p), image_root="/imgs")
    assert src[0]["image_path"] == "/imgs/n1.jpg" and src[0]["answers"] == ["a"]


def test_webdataset(syn):
    src = make_source("webdataset", shards=os.path.join(syn, "webdataset", "*.tar"))
    assert len(src) == 21
    train = make_source(
        "lavis_caption",
        ann_paths=_ann(syn, "caption_train.json"),
        image_root=os.path.join(syn, "images"),
    )
    for i in (0, 7, 20):  # shard boundaries at 7 and 14
        r = src[i]
        with open(train[5 * i]["image_path"], "rb") as f:
            assert r["image"] == f.read()
        assert r["text"] == train[5 * i]["text"]


def test_webdataset_json_caption_and_missing_image(tmp_path):
    import io
    import tarfile

    path = tmp_path / "s-0.tar"
    with tarfile.open(path, "w") as tar:
        for name, data in [("a.json", b'{"caption": "from json"}'), ("b.txt", b"no image")]:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    src = make_source("webdataset", shards=str(path))
    assert [src[0]["text"], src[0]["image"]] == ["from json", None]
    assert src[1]["text"] == "no image"


def test_error_messages(tmp_path):
    with pytest.raises(FileNotFoundError, match="annotation file not found"):
        make_source("lavis_caption", ann_paths=str(tmp_path / "nope.json"), image_root="")
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps([{"image": "x.jpg"}]))
    with pytest.raises(ValueError, match=r"bad.json\[0\]: missing key\(s\) \['caption'\]"):
        make_source("lavis_caption", ann_paths=str(bad), image_root="")
    with pytest.raises(ValueError, match="unknown source kind 'coco'"):
        make_source("coco")
    with pytest.raises(FileNotFoundError, match="no WebDataset shard matches"):
        make_source("webdataset", shards=str(tmp_path / "*.tar"))


def test_arrayrecord_roundtrip_and_prepare_script(syn, tmp_path):
    rec = {"image": b"\xff\xd8abc", "text": "a b", "captions": ["a b"], "key": "k"}
    assert arrayrecord.decode_record(arrayrecord.encode_record(rec)) == rec
    with pytest.raises(ValueError, match="not a vpgtrans ArrayRecord payload"):
        arrayrecord.decode_record(b"XXXX")
    # Convert the caption JSON with two broken images; they are skipped and counted.
    os.makedirs(tmp_path / "images" / "train")
    ann = json.load(open(_ann(syn, "caption_train.json")))[:12]
    for r in ann[:10]:
        dst = tmp_path / "images" / r["image"]
        if not dst.exists():
            dst.write_bytes(open(os.path.join(syn, "images", r["image"]), "rb").read())
    ann[10]["image"] = "train/missing.jpg"
    (tmp_path / "images" / "train" / "corrupt.jpg").write_bytes(b"garbage")
    ann[11]["image"] = "train/corrupt.jpg"
    (tmp_path / "ann.json").write_text(json.dumps(ann))
    script = os.path.join(ROOT, "scripts", "prepare_data.py")
    base = [sys.executable, script, "--kind", "lavis_caption", "--ann", str(tmp_path / "ann.json")]
    base += ["--image_root", str(tmp_path / "images"), "--records_per_shard", "4"]
    r = subprocess.run(
        base
        + ["--out_prefix", str(tmp_path / "ar" / "c"), "--verify", "--max_bad_fraction", "0.2"],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stderr
    assert "wrote 10 records in 3 shard(s) (2 bad skipped)" in r.stdout
    assert "missing.jpg" in r.stderr and "corrupt.jpg" in r.stderr
    src = make_source("arrayrecord", paths=str(tmp_path / "ar" / "c-*.array_record"))
    assert len(src) == 10
    assert src[9]["text"] == ann[9]["caption"] and load_image(src[9]["image"]).size == (32, 32)
    r = subprocess.run(
        base + ["--out_prefix", str(tmp_path / "ar2" / "c"), "--verify"],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 2 and "2 of 12 samples were bad" in r.stderr
    r = subprocess.run([sys.executable, script, "--help"], capture_output=True, text=True)
    assert r.returncode == 0 and "--kind" in r.stdout


def test_arrayrecord_reading_does_not_import_tensorflow(syn, tmp_path):
    code = (
        "import sys;from vpgtrans_jax.data.registry import make_source;"
        "from vpgtrans_jax.data.arrayrecord import write_shards;"
        f"w=make_source('webdataset', shards={os.path.join(syn, 'webdataset', '*.tar')!r});"
        f"write_shards((w[i] for i in range(3)), {str(tmp_path / 'x')!r});"
        f"s=make_source('arrayrecord', paths={str(tmp_path / 'x-*')!r});"
        "assert len(s)==3 and s[2]['text'];"
        "assert 'tensorflow' not in sys.modules, 'tensorflow was imported'"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


def test_tfds_via_mock_data():
    import tensorflow_datasets as tfds

    class VpgTinyCaptions(tfds.core.GeneratorBasedBuilder):
        VERSION = tfds.core.Version("1.0.0")

        def _info(self):
            features = {
                "image": tfds.features.Image(shape=(None, None, 3)),
                "caption": tfds.features.Text(),
            }
            return tfds.core.DatasetInfo(
                builder=self, features=tfds.features.FeaturesDict(features)
            )

        def _split_generators(self, dl_manager):
            return {"train": self._generate_examples()}

        def _generate_examples(self):
            yield 0, {"image": np.zeros((4, 4, 3), np.uint8), "caption": "unused"}

    with tfds.testing.mock_data(num_examples=6, policy=tfds.testing.MockPolicy.USE_CODE):
        src = make_source("tfds", name="vpg_tiny_captions", split="train")
        assert len(src) == 6
        recs = [src[i] for i in range(6)]
        direct = tfds.data_source("vpg_tiny_captions", split="train")
        for i, r in enumerate(recs):
            assert (
                isinstance(r["image"], bytes) and r["key"] == f"tfds:vpg_tiny_captions/train[{i}]"
            )
            np.testing.assert_array_equal(np.asarray(load_image(r["image"])), direct[i]["image"])
            assert r["text"] == direct[i]["caption"] and isinstance(r["text"], str)
        with pytest.raises(KeyError, match="TFDS feature 'captions/text' not found"):
            make_source("tfds", name="vpg_tiny_captions", split="train", text_key="captions/text")[
                0
            ]


def test_per_sample_prompt_fields_reach_the_records(syn, tmp_path):
    import io
    import tarfile

    ann = json.load(open(_ann(syn, "caption_train.json")))[:2]
    ann[0]["prompt"] = "Question: what is it? Answer:"
    ann[1]["instruction"] = "Describe it."
    (tmp_path / "c.json").write_text(json.dumps(ann))
    cap = make_source("lavis_caption", ann_paths=str(tmp_path / "c.json"), image_root="")
    assert cap[0]["prompt"] == ann[0]["prompt"] and "instruction" not in cap[0]
    assert cap[1]["instruction"] == "Describe it." and "prompt" not in cap[1]

    os.makedirs(tmp_path / "cc" / "image")
    (tmp_path / "cc" / "filter_cap.json").write_text(json.dumps(
        {"annotations": [{"image_id": "1", "caption": "x", "instruction": "What is odd?"}]}
    ))  # fmt: skip
    assert make_source("cc_sbu_align", root=str(tmp_path / "cc"))[0]["instruction"] == (
        "What is odd?"
    )
    questions = json.load(open(_ann(syn, "vqa_val_questions.json")))
    questions["questions"][0]["prompt"] = "Q: {} A:"
    (tmp_path / "q.json").write_text(json.dumps(questions))
    vqa = make_source("vqa", questions_path=str(tmp_path / "q.json"), annotations_path=None,
                      image_root="")  # fmt: skip
    assert vqa[0]["prompt"] == "Q: {} A:" and "prompt" not in vqa[1]
    (tmp_path / "g.json").write_text(json.dumps([{"image": "a.jpg", "question": "q?",
                                                  "prompt": "Short answer: {}"}]))  # fmt: skip
    assert make_source("gqa", questions_path=str(tmp_path / "g.json"), image_root="")[0][
        "prompt"
    ] == ("Short answer: {}")
    with tarfile.open(tmp_path / "w-0.tar", "w") as tar:
        data = json.dumps({"caption": "c", "prompt": "a photo of"}).encode()
        info = tarfile.TarInfo("k.json")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    assert make_source("webdataset", shards=str(tmp_path / "w-0.tar"))[0]["prompt"] == "a photo of"


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
def test_prepare_data_verify_counts_oversized_images(syn, tmp_path, monkeypatch):
    from PIL import ImageFile

    from tests.test_data_processors import bomb_png
    from vpgtrans_jax.data.sources import ListSource

    decoded = []
    real_load = ImageFile.ImageFile.load
    monkeypatch.setattr(
        ImageFile.ImageFile, "load", lambda self: decoded.append(self.size) or real_load(self)
    )
    good = open(os.path.join(syn, "images", "train", "000000.jpg"), "rb").read()
    src = ListSource([{"image": good, "key": f"g{i}", "text": "t"} for i in range(9)]
                     + [{"image": bomb_png(), "key": "bomb", "text": "t"}])  # fmt: skip
    with pytest.raises(arrayrecord.BadDataError, match="1 of 10 samples were bad"):
        arrayrecord.convert_source(src, str(tmp_path / "ar" / "x"), verify=True,
                                   max_bad_fraction=0.05)  # fmt: skip
    paths = arrayrecord.convert_source(src, str(tmp_path / "ar2" / "x"), verify=True,
                                       max_bad_fraction=0.2)  # fmt: skip
    assert len(make_source("arrayrecord", paths=paths)) == 9
    assert (13000, 13000) not in decoded
