"""Pipelines: mixing ratios, exact resume, bad-sample handling, host sharding, eval padding."""

from __future__ import annotations

import dataclasses
import json
import os

import jax
import numpy as np
import pytest

from tests.test_data_processors import bomb_png
from vpgtrans_jax.data import pipeline, text
from vpgtrans_jax.data.registry import make_source
from vpgtrans_jax.data.sources import ListSource
from vpgtrans_jax.data.transforms import SampleConfig, SampleProcessor
from vpgtrans_jax.tiny.dataset import generate

CFG = SampleConfig(image_size=16, max_len=24)


@pytest.fixture(scope="module")
def syn(tmp_path_factory) -> str:
    out = str(tmp_path_factory.mktemp("syn"))
    generate(out, 40, seed=2, image_size=32, vocab_size=400)
    return out


@pytest.fixture(scope="module")
def tok(syn):
    return text.load_tokenizer(os.path.join(syn, "tokenizer"))


@pytest.fixture(scope="module")
def captions(syn):
    root = os.path.join(syn, "images")
    return make_source(
        "lavis_caption",
        ann_paths=os.path.join(syn, "annotations", "caption_train.json"),
        image_root=root,
    )


def _train(sources, tok, cfg=CFG, **kw):
    kw.setdefault("shard_index", 0)
    kw.setdefault("shard_count", 1)
    return pipeline.train_iterator(sources, SampleProcessor(cfg, tok), **kw)


def _equal(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


def test_batch_shapes_and_targets(captions, tok):
    it = _train([("coco", captions, 1.0)], tok, batch_size=3)
    b = next(it)
    assert {k: (v.shape, v.dtype) for k, v in b.items()} == {
        "pixel_values": ((3, 16, 16, 3), np.float32),
        "input_ids": ((3, 24), np.int32),
        "attention_mask": ((3, 24), np.int32),
        "labels": ((3, 24), np.int32),
        "valid": ((3,), np.int32),
    }
    nl = tok("\n", add_special_tokens=False).input_ids[0]
    for row, mask in zip(b["input_ids"], b["attention_mask"]):
        assert row[0] == tok.bos_token_id and row[mask.sum() - 1] == nl
        assert tok.decode(row[mask == 1], skip_special_tokens=True).rstrip("\n") in {
            captions[i]["text"] for i in range(len(captions))
        }


def test_mixing_ratios(captions, syn, tok):
    wds = make_source("webdataset", shards=os.path.join(syn, "webdataset", "*.tar"))
    cc = make_source("cc_sbu_align", root=os.path.join(syn, "cc_sbu_align"))
    cfg = SampleConfig(image_size=8, max_len=48)
    it = _train([("a", captions, 0.1), ("b", wds, 0.2), ("c", cc, 0.7)], tok, cfg, batch_size=50)
    for _ in range(12):
        next(it)
    m = it.metrics()
    total = m["data/seen"]
    assert total == 600
    for name, w in (("a", 0.1), ("b", 0.2), ("c", 0.7)):
        assert abs(m[f"data/samples/{name}"] / total - w) < 0.02, m


def _resume_check(make, first: int, more: int) -> None:
    it = make()
    for _ in range(first):
        next(it)
    state = json.loads(json.dumps(it.get_state()))  # must survive a JSON checkpoint
    metrics = it.metrics()
    expected = [next(it) for _ in range(more)]
    it.close()
    it2 = make()
    it2.set_state(state)
    assert it2.metrics() == metrics
    got = [next(it2) for _ in range(more)]
    it2.close()
    assert all(_equal(a, b) for a, b in zip(expected, got))


def test_exact_resume_across_epochs(captions, syn, tok):
    wds = make_source("webdataset", shards=os.path.join(syn, "webdataset", "*.tar"))
    sources = [("coco", captions, 0.5), ("wds", wds, 0.5)]
    # 32 wds records, 7 batches of 8 -> resumes after the first reshuffled epoch boundary.
    _resume_check(lambda: _train(sources, tok, batch_size=8, seed=3), first=7, more=3)
    a, b = _train(sources, tok, batch_size=8, seed=3), _train(sources, tok, batch_size=8, seed=4)
    assert not _equal(next(a), next(b))


def test_exact_resume_with_worker_processes(captions, tok):
    _resume_check(
        lambda: _train([("coco", captions, 1.0)], tok, batch_size=4, seed=1, num_workers=2),
        first=3,
        more=2,
    )


def _with_bad(captions, syn, n_bad: int) -> ListSource:
    good = [captions[i] for i in range(20)]
    corrupt = os.path.join(syn, "corrupt.jpg")
    with open(corrupt, "wb") as f:
        f.write(b"\xff\xd8 not really a jpeg")
    bad = [
        {**good[0], "image_path": "/nonexistent/x.jpg", "key": "missing"},
        {**good[1], "image_path": corrupt, "key": "corrupt"},
        {**good[2], "text": " ...  ", "key": "empty"},
        {"text": "no image at all", "key": "noimage"},
    ]
    return ListSource(good + [bad[i % 4] for i in range(n_bad)])


def test_bad_samples_are_skipped_and_counted(captions, syn, tok, caplog):
    src = _with_bad(captions, syn, n_bad=4)
    it = _train([("mix", src, 1.0)], tok, batch_size=6, max_bad_fraction=0.3)
    batches = [next(it) for _ in range(8)]  # two epochs of 24 records
    assert all(b["pixel_values"].shape[0] == 6 for b in batches)
    assert all((b["attention_mask"].sum(1) > 0).all() for b in batches)
    m = it.metrics()
    # 48 good rows = 2 full epochs of 20 + 8 more: 8..12 bad rows were read on the way.
    assert m["data/bad"] == m["data/bad/mix"] and 8 <= m["data/bad"] <= 12
    assert m["data/seen"] - m["data/bad"] == 48
    logged = caplog.text
    for key, reason in [
        ("missing", "FileNotFoundError"),
        ("corrupt", "UnidentifiedImageError"),
        ("empty", "empty text"),
        ("noimage", "neither 'image' bytes nor 'image_path'"),
    ]:
        assert key in logged and reason in logged


def test_too_many_bad_samples_stop_with_examples(captions, syn, tok):
    src = _with_bad(captions, syn, n_bad=20)
    it = _train(
        [("mix", src, 1.0)], tok, batch_size=4, max_bad_fraction=0.2, min_samples_before_error=10
    )
    with pytest.raises(
        pipeline.BadDataError, match=r"samples were bad .*max_bad_fraction=0.2.*\[mix\]"
    ):
        for _ in range(20):
            next(it)


def test_augmentation_is_seeded(captions, tok):
    a = next(_train([("c", captions, 1.0)], tok, batch_size=2, seed=5))
    b = next(_train([("c", captions, 1.0)], tok, batch_size=2, seed=5))
    assert _equal(a, b)


def _vqa(syn):
    return make_source(
        "vqa",
        questions_path=os.path.join(syn, "annotations", "vqa_val_questions.json"),
        annotations_path=os.path.join(syn, "annotations", "vqa_val_annotations.json"),
        image_root=os.path.join(syn, "images", "val"),
        image_pattern="{image_id:06d}.jpg",
    )


def test_eval_shards_pad_and_keep_ids(syn, tok):
    vqa = _vqa(syn)  # 4 val images x 3 questions = 12
    cfg = SampleConfig(
        mode="generate",
        image_size=16,
        max_len=40,
        prompt="Question: {} Answer:",
        text_field="question",
        text_processor="question",
        meta_keys=("question_id", "answers"),
    )
    proc = SampleProcessor(cfg, tok)
    seen = []
    for host in range(5):  # 12 questions over 5 hosts: 3 per host, padded to 2 batches of 2
        batches = list(pipeline.eval_iterator(vqa, proc, 2, shard_index=host, shard_count=5))
        assert len(batches) == 2
        for b in batches:
            assert b["input_ids"].shape == (2, 40) and b["pixel_values"].shape == (2, 16, 16, 3)
            assert (b["attention_mask"][:, -1] == b["valid"]).all()  # left padded
            seen += [int(q) for q, v in zip(b["question_id"], b["valid"]) if v]
            assert all(q == -1 for q, v in zip(b["question_id"], b["valid"]) if not v)
    assert sorted(seen) == sorted(vqa[i]["question_id"] for i in range(len(vqa)))
    b = next(pipeline.eval_iterator(vqa, proc, 2, shard_index=0, shard_count=1))
    q0 = vqa[0]["question"].lower().rstrip("?")
    decoded = tok.decode(b["input_ids"][0], skip_special_tokens=True)
    assert decoded == f"Question: {q0}? Answer:" and len(b["answers"][0]) == 10


def test_eval_bad_rows_are_invalid_and_counted(captions, syn, tok):
    src = _with_bad(captions, syn, n_bad=2)
    cfg = SampleConfig(
        mode="generate", image_size=8, max_len=8, text_field=None, meta_keys=("image_id",)
    )
    it = pipeline.eval_iterator(src, SampleProcessor(cfg, tok), 4, shard_index=0, shard_count=1)
    valid = np.concatenate([b["valid"] for b in it])
    assert valid.tolist() == [1] * 20 + [0] * 2 + [0] * 2  # 2 bad rows, 2 padding rows
    assert it.metrics()["data/bad"] == 2 and it.metrics()["data/seen"] == 22


def test_train_shards_are_disjoint(captions, tok):
    words = ["red", "green", "blue", "yellow", "purple"]
    texts = [f"{a} {b}" for a in words for b in words[:4]]  # 20 distinct captions
    src = ListSource([{**captions[0], "text": t, "key": t} for t in texts])
    per_host = []
    for host in range(2):
        it = _train([("c", src, 1.0)], tok, batch_size=10, shard_index=host, shard_count=2)
        b = next(it)  # exactly one epoch of this host's 10 records
        per_host.append(
            {
                tok.decode(r[m == 1], skip_special_tokens=True).strip()
                for r, m in zip(b["input_ids"], b["attention_mask"])
            }
        )
    assert len(per_host[0]) == len(per_host[1]) == 10
    assert per_host[0] | per_host[1] == set(texts)


def test_global_batch_on_mesh(captions, tok):
    from jax.sharding import Mesh

    mesh = Mesh(np.array(jax.devices()[:8]).reshape(4, 2, 1), ("data", "fsdp", "tensor"))
    b = next(_train([("c", captions, 1.0)], tok, batch_size=8))
    g = pipeline.make_global_batch(b, mesh)
    assert g["pixel_values"].shape == (8, 16, 16, 3)
    assert len(g["input_ids"].sharding.device_set) == 8
    np.testing.assert_array_equal(np.asarray(g["labels"]), b["labels"])


def test_argument_errors(captions, tok):
    with pytest.raises(ValueError, match="weight must be > 0"):
        _train([("c", captions, 0.0)], tok, batch_size=2)
    with pytest.raises(ValueError, match="max_bad_fraction must be in"):
        _train([("c", captions, 1.0)], tok, batch_size=2, max_bad_fraction=1.5)
    with pytest.raises(ValueError, match="shard_index=2 must be in"):
        _train([("c", captions, 1.0)], tok, batch_size=2, shard_index=2, shard_count=2)
    with pytest.raises(ValueError, match="SampleConfig.mode must be one of"):
        SampleConfig(mode="eval")
    gen = SampleProcessor(SampleConfig(mode="generate", text_field=None), tok)
    with pytest.raises(ValueError, match="mode='train'"):
        pipeline.train_iterator([("c", captions, 1.0)], gen, 2, shard_index=0, shard_count=1)


# ---- per-sample prompts (docs/data.md, "Per-sample prompts") ------------------------------------

TEMPLATE = "###Human: <Img><ImageHere></Img> {} ###Assistant: "
CHAT = SampleConfig(
    image_size=16, max_len=64, prompt=TEMPLATE, text_processor="none", end="###",
    instructions=("Describe this image in detail.", "What do you notice?"),
)  # fmt: skip


def _row(cfg, tok, record, seed=0):
    return SampleProcessor(cfg, tok).random_map(record, np.random.default_rng(seed))


def test_a_sample_prompt_replaces_a_plain_prompt_and_is_loss_masked(captions, tok):
    rec = {**captions[0], "prompt": "Question: what is in the picture? Answer:"}
    for cfg in (CFG, SampleConfig(image_size=16, max_len=24, prompt="a photo of")):
        row = _row(cfg, tok, rec)
        want = text.encode_train(tok, rec["text"], 24, rec["prompt"])
        assert not row["_bad"]
        for k in ("input_ids", "attention_mask", "labels"):
            np.testing.assert_array_equal(row[k], want[k])
    prompt_len = len(tok(rec["prompt"])["input_ids"])
    assert (row["labels"][:prompt_len] == text.IGNORE_INDEX).all()
    assert (row["labels"][prompt_len:][row["attention_mask"][prompt_len:] == 1] >= 0).all()
    # Without a prompt of its own, the config's prompt is used.
    plain = _row(SampleConfig(image_size=16, max_len=24, prompt="a photo of"), tok, captions[0])
    want = text.encode_train(tok, captions[0]["text"], 24, "a photo of")
    np.testing.assert_array_equal(plain["input_ids"], want["input_ids"])


def test_instruction_fills_the_template_else_one_of_the_config_list(captions, tok):
    rec = {**captions[0], "text": "A red circle."}
    own = _row(CHAT, tok, {**rec, "instruction": "Is it round?"})
    filled = TEMPLATE.replace("{}", "Is it round?")
    want = text.encode_train(tok, "A red circle.", 64, filled, "###")
    for k in ("input_ids", "labels", "image_offset"):
        np.testing.assert_array_equal(own[k], want[k])
    chosen = {}
    for seed in range(12):
        row = _row(CHAT, tok, rec, seed)
        encoded = {
            i: text.encode_train(tok, rec["text"], 64, TEMPLATE.replace("{}", i), "###")
            for i in CHAT.instructions
        }
        picks = [i for i, e in encoded.items() if np.array_equal(row["input_ids"], e["input_ids"])]
        assert len(picks) == 1
        chosen[seed] = picks[0]
        again = _row(CHAT, tok, rec, seed)  # deterministic per generator (seed, element)
        np.testing.assert_array_equal(again["input_ids"], row["input_ids"])
    assert set(chosen.values()) == set(CHAT.instructions)
    # The image augmentation draws come first, unchanged by the instruction draw.
    plain = SampleConfig(image_size=16, max_len=64, text_processor="none", end="###")
    np.testing.assert_array_equal(_row(CHAT, tok, rec, 3)["pixel_values"],
                                  _row(plain, tok, rec, 3)["pixel_values"])  # fmt: skip
    bare = dataclasses.replace(CHAT, instructions=())
    assert "needs an instruction" in _row(bare, tok, rec)["_bad"]
    assert "must be a string" in _row(CHAT, tok, {**rec, "prompt": 3})["_bad"]


def test_instruction_choice_resumes_exactly(captions, tok):
    src = ListSource([{**captions[i], "text": f"caption {i}."} for i in range(20)])
    _resume_check(lambda: _train([("c", src, 1.0)], tok, CHAT, batch_size=4, seed=2), 3, 3)


def test_samples_with_and_without_image_placeholder_share_a_batch(captions, tok):
    own = "###Human: <Img><ImageHere></Img> what is it? ###Assistant: "
    src = ListSource([{**captions[i], **({"prompt": own} if i % 2 else {})} for i in range(8)])
    b = next(_train([("c", src, 1.0)], tok, SampleConfig(image_size=16, max_len=40), batch_size=8))
    offsets = {int(o) for o in b["image_offset"]}
    assert 0 in offsets and len(offsets) == 2  # soft prompt first where there is no placeholder


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
def test_oversized_images_are_bad_samples(captions, tok):
    bomb = {**captions[0], "image": bomb_png(), "image_path": None, "key": "bomb"}
    src = ListSource([bomb] + [captions[i] for i in range(1, 10)])
    it = _train([("c", src, 1.0)], tok, batch_size=9, max_bad_fraction=0.5)
    next(it)
    assert it.metrics()["data/bad"] == 1
    small = SampleConfig(image_size=16, max_len=24, max_image_pixels=100)
    assert "more than max_image_pixels=100" in _row(small, tok, captions[1])["_bad"]
