"""scripts/evaluate.py end to end: synthetic data, a tiny HF BLIP-2 with the synthetic tokenizer's
vocabulary, every task; predictions in the official formats, metrics JSON equal to score_files."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys

import ml_collections
import numpy as np
import pytest

import vpgtrans_jax
from tests import torch_reference as F
from tests.test_data_processors import bomb_png
from vpgtrans_jax.data import text as text_lib
from vpgtrans_jax.data.processors import blip_image_eval
from vpgtrans_jax.data.text import load_tokenizer
from vpgtrans_jax.errors import BadDataError
from vpgtrans_jax.eval import runner
from vpgtrans_jax.eval.scoring import score_files
from vpgtrans_jax.generation import (
    decode_outputs,
    end_token_ids,
    generate,
    generate_text,
    newline_eos_id,
)
from vpgtrans_jax.tiny.dataset import generate as make_synthetic

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _load(path: str, name: str):
    spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, path))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


evaluate_script = runner  # what scripts/evaluate.py runs


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    data = str(tmp_path_factory.mktemp("syn"))
    manifest = make_synthetic(
        data,
        num_images=12,
        image_size=32,
        vocab_size=300,
        val_fraction=0.25,
        test_fraction=0.25,
        questions_per_image=2,
    )
    ckpt = str(tmp_path_factory.mktemp("tiny_blip2"))
    pt = F.tiny_blip2(
        "opt", seed=0, vocab_size=manifest["tokenizer_vocab_size"], max_position_embeddings=128
    )
    pt.save_pretrained(ckpt)
    ann = os.path.join(data, "annotations")
    # NoCaps needs a `domain` per reference image.
    with open(os.path.join(ann, "caption_test_gt.json")) as f:
        gt = json.load(f)
    for k, im in enumerate(gt["images"]):
        im["domain"] = ("in-domain", "near-domain", "out-domain")[k % 3]
    with open(os.path.join(ann, "nocaps_gt.json"), "w") as f:
        json.dump(gt, f)
    return dict(data=data, ann=ann, ckpt=ckpt, tok=os.path.join(data, "tokenizer"))


def _config(env, task: str, **data) -> ml_collections.ConfigDict:
    name = {"coco_caption": "eval_coco_caption", "nocaps": "eval_nocaps"}.get(task, f"eval_{task}")
    cfg = _load(f"configs/{name}.py", name).get_config()
    cfg.checkpoint = env["ckpt"]
    cfg.tokenizer = env["tok"]
    cfg.batch_size = 4  # 6 questions / 3 images per split -> a padded last batch
    cfg.num_workers = 2
    cfg.generation.max_new_tokens = 4
    cfg.generation.min_new_tokens = min(cfg.generation.min_new_tokens, 2)
    cfg.generation.num_beams = 2
    cfg.data.image_root = os.path.join(env["data"], "images")
    for k, v in data.items():
        setattr(cfg.data, k, v)
    return cfg


def _vqa_paths(env, split="test"):
    return dict(
        annotations=os.path.join(env["ann"], f"vqa_{split}_questions.json"),
        answers=os.path.join(env["ann"], f"vqa_{split}_annotations.json"),
        image_pattern=f"{split}/{{image_id:06d}}.jpg",
    )


@pytest.mark.parametrize("task", ["vqav2", "okvqa", "gqa", "coco_caption", "nocaps"])
def test_evaluate_every_task(env, task, tmp_path):
    if task in ("vqav2", "okvqa"):
        cfg = _config(env, task, **_vqa_paths(env))
    elif task == "gqa":
        cfg = _config(env, task, annotations=os.path.join(env["ann"], "gqa_test_questions.json"))
        cfg.data.image_root = os.path.join(env["data"], "images", "test")
    else:
        gt = "caption_test_gt.json" if task == "coco_caption" else "nocaps_gt.json"
        cfg = _config(
            env,
            task,
            annotations=os.path.join(env["ann"], "caption_test.json"),
            gt=os.path.join(env["ann"], gt),
        )
    metrics = evaluate_script.evaluate(cfg, str(tmp_path))
    pred_path = tmp_path / f"predictions_{task}.json"
    preds = json.loads(pred_path.read_text())
    with open(tmp_path / f"metrics_{task}.json") as f:
        written = json.load(f)
    assert written == json.loads(json.dumps(metrics))
    assert not list(tmp_path.glob("*.part*"))  # shares merged and removed
    if task in ("vqav2", "okvqa"):
        questions = json.loads(open(cfg.data.annotations).read())["questions"]
        assert [p["question_id"] for p in preds] == [q["question_id"] for q in questions]
        assert all(isinstance(p["answer"], str) for p in preds)
        assert metrics["num_questions"] == len(questions)
        ref = score_files(task, pred_path, cfg.data.answers, cfg.data.annotations, log=lambda m: 0)
        assert metrics["accuracy"] == ref["accuracy"]
    elif task == "gqa":
        questions = json.loads(open(cfg.data.annotations).read())
        assert isinstance(preds, dict) and set(preds) == set(questions)
        assert 0.0 <= metrics["accuracy"]["overall"] <= 100.0
    else:
        images = json.loads(open(cfg.data.gt).read())["images"]
        assert sorted(p["image_id"] for p in preds) == sorted(im["id"] for im in images)
        assert set(metrics["metrics"]) >= {"Bleu_4", "METEOR", "ROUGE_L", "CIDEr"}
        if task == "nocaps":
            assert set(metrics["domains"]) == {"in-domain", "near-domain", "out-domain"}


def test_predictions_equal_generate_text_and_limit(env, tmp_path):
    """evaluate.py's answers are generate_text's for the same prompts; limit scores a subset."""
    cfg = _config(env, "vqav2", **_vqa_paths(env, "val"))
    cfg.limit = 3
    metrics = evaluate_script.evaluate(cfg, str(tmp_path))
    preds = json.loads((tmp_path / "predictions_vqav2.json").read_text())
    assert len(preds) == 3 and metrics["num_questions"] == 3

    source = evaluate_script.make_source(cfg)
    model = vpgtrans_jax.load(env["ckpt"])
    tok = load_tokenizer(env["tok"])
    prompts = [evaluate_script.prompt_text(cfg, source[i]) for i in range(3)]
    assert prompts[0].startswith("Question: ") and prompts[0].endswith(" Answer:")
    texts = generate_text(
        model,
        tok,
        [source[i]["image_path"] for i in range(3)],
        prompts,
        max_new_tokens=4,
        min_new_tokens=1,
        num_beams=2,
        length_penalty=-1.0,
    )
    # Batch composition (padding to batch_size 4, prompt bucket) must not change answers.
    assert [p["answer"] for p in preds] == texts


def test_image_inside_the_prompt(env, tmp_path):
    """A stage-3 template: evaluate.py and generate_text put the soft prompt at <ImageHere>."""
    cfg = _config(env, "vqav2", **_vqa_paths(env, "val"))
    cfg.limit = 2
    cfg.max_prompt_len = 48
    cfg.prompt = "###Human: <Img><ImageHere></Img> {} ###Assistant: "
    evaluate_script.evaluate(cfg, str(tmp_path))
    preds = json.loads((tmp_path / "predictions_vqav2.json").read_text())

    source = evaluate_script.make_source(cfg)
    model = vpgtrans_jax.load(env["ckpt"])
    tok = load_tokenizer(env["tok"])
    prompts = [evaluate_script.prompt_text(cfg, source[i]) for i in range(2)]
    images = [source[i]["image_path"] for i in range(2)]
    kw = dict(max_new_tokens=4, min_new_tokens=1, num_beams=2, length_penalty=-1.0)
    texts = generate_text(model, tok, images, prompts, max_prompt_len=48, **kw)
    assert [p["answer"] for p in preds] == texts
    # The same ids with the image first (no placeholder) are a different prompt for the LLM.
    batch = text_lib.generation_batch(tok, prompts, 48)
    pixels = np.stack([blip_image_eval(im, model.config.vision.image_size) for im in images])
    common = dict(eos_token_id=newline_eos_id(tok, "opt"), pad_token_id=tok.pad_token_id, **kw)
    inside = generate(
        model,
        pixels,
        batch["input_ids"],
        batch["attention_mask"],
        image_offsets=batch["image_offset"],
        **common,
    )
    first = generate(model, pixels, batch["input_ids"], batch["attention_mask"], **common)
    expect = decode_outputs(tok, inside, [common["eos_token_id"]], tok.pad_token_id)
    assert expect == texts
    assert not np.array_equal(np.asarray(inside), np.asarray(first))
    # A stage-3 end of answer: evaluate.py and generate_text agree on it too.
    cfg.end = "###"
    evaluate_script.evaluate(cfg, str(tmp_path / "hashes"))
    preds = json.loads((tmp_path / "hashes" / "predictions_vqav2.json").read_text())
    texts = generate_text(model, tok, images, prompts, max_prompt_len=48, end="###", **kw)
    assert [p["answer"] for p in preds] == texts


def test_end_string_cuts_outputs(env):
    tok = load_tokenizer(env["tok"])
    ids = tok("a red circle ### more", add_special_tokens=False)["input_ids"]
    rows = np.array([ids])
    assert decode_outputs(tok, rows, [10**6], tok.pad_token_id, end="###") == ["a red circle"]
    single = tok("###", add_special_tokens=False)["input_ids"]
    want = single if len(single) == 1 else [tok.eos_token_id]
    assert end_token_ids(tok, "opt", "###") == want
    assert end_token_ids(tok, "opt", "\n") == [newline_eos_id(tok, "opt")]


def test_newline_eos_and_decoding(env):
    tok = load_tokenizer(env["tok"])
    nl = tok("\n", add_special_tokens=False)["input_ids"]
    assert newline_eos_id(tok, "opt") == nl[0]

    class SentencePieceLike:  # LLaMA's slow tokenizer: "\n" -> ["▁", "<0x0A>"]
        def __call__(self, text, add_special_tokens=False):
            return {"input_ids": [29871, 13]}

    assert newline_eos_id(SentencePieceLike(), "llama") == 13
    with pytest.raises(ValueError, match="unknown LLM family 't5'"):
        newline_eos_id(tok, "t5")
    a, b = tok("a red circle", add_special_tokens=False)["input_ids"], tok.pad_token_id
    rows = np.array([a + [nl[0], 7, 7], a + [b, b, b]])
    assert decode_outputs(tok, rows, [nl[0]], b) == ["a red circle", "a red circle"]


def test_cli_errors(env, tmp_path):
    script = os.path.join(ROOT, "scripts", "evaluate.py")
    out = subprocess.run(
        [
            sys.executable,
            script,
            f"--config={ROOT}/configs/eval_gqa.py",
            f"--workdir={tmp_path}",
            f"--config.checkpoint={env['ckpt']}",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "JAX_PLATFORMS": "cpu"},
    )
    assert out.returncode != 0
    assert "--config.data.annotations is required for task 'gqa'" in out.stderr


def _copied_images(env, tmp_path) -> str:
    root = tmp_path / "images"
    shutil.copytree(os.path.join(env["data"], "images"), root)
    return str(root)


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
def test_bad_images_are_skipped_counted_and_reported(env, tmp_path, capsys):
    """One missing and one oversized image (2 questions each) of 3: the other answers are
    written and scored, the 4 bad samples counted in the metrics and the summary."""
    cfg = _config(env, "vqav2", **_vqa_paths(env, "val"))
    reference = evaluate_script.evaluate(cfg, str(tmp_path / "ref"))
    ref = json.loads((tmp_path / "ref" / "predictions_vqav2.json").read_text())
    assert reference["bad_samples"] == {"count": 0, "of": 6, "examples": []}

    cfg.data.image_root = _copied_images(env, tmp_path)
    source = evaluate_script.make_source(cfg)
    paths = sorted({source[i]["image_path"] for i in range(len(source))})
    os.remove(paths[0])
    with open(paths[1], "wb") as f:
        f.write(bomb_png())
    with pytest.raises(BadDataError, match=r"4 of 6 samples were bad .*max_bad_fraction=0.05"):
        evaluate_script.evaluate(cfg, str(tmp_path / "strict"))
    cfg.max_bad_fraction = 0.9
    metrics = evaluate_script.evaluate(cfg, str(tmp_path / "out"))
    preds = json.loads((tmp_path / "out" / "predictions_vqav2.json").read_text())
    kept = [source[i]["question_id"] for i in range(6) if source[i]["image_path"] == paths[2]]
    assert [p["question_id"] for p in preds] == kept
    assert preds == [p for p in ref if p["question_id"] in kept]  # same answers as before
    bad = metrics["bad_samples"]
    assert bad["count"] == 4 and bad["of"] == 6 and metrics["num_questions"] == 2
    reasons = " ".join(e["reason"] for e in bad["examples"])
    assert "FileNotFoundError" in reasons and "more than max_image_pixels" in reasons
    written = json.loads((tmp_path / "out" / "metrics_vqav2.json").read_text())
    assert written["bad_samples"] == bad
    assert "skipped 4 of 6 samples" in capsys.readouterr().out


def test_interrupted_evaluation_resumes_without_regenerating(env, tmp_path, monkeypatch):
    cfg = _config(env, "vqav2", **_vqa_paths(env, "val"))
    cfg.batch_size = 2  # 6 questions: 3 batches
    evaluate_script.evaluate(cfg, str(tmp_path / "whole"))
    whole = json.loads((tmp_path / "whole" / "predictions_vqav2.json").read_text())

    real = runner.Evaluator.generate
    calls: list[int] = []

    def interrupted(self, records, pixels):
        if len(calls) == 2:  # Ctrl-C during the third batch
            raise KeyboardInterrupt
        calls.append(len(records))
        return real(self, records, pixels)

    def counting(self, records, pixels):
        calls.append(len(records))
        return real(self, records, pixels)

    monkeypatch.setattr(runner.Evaluator, "generate", interrupted)
    w = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        evaluate_script.evaluate(cfg, str(w))
    assert not (w / "predictions_vqav2.json").exists()
    part = w / "predictions_vqav2.part0-of-1.jsonl"
    assert len(part.read_text().splitlines()) == 3  # the header and two completed batches
    with open(part, "a") as f:
        f.write('{"done": [[5, "cut sh')  # a line a kill cut short is ignored

    calls.clear()
    monkeypatch.setattr(runner.Evaluator, "generate", counting)
    evaluate_script.evaluate(cfg, str(w))
    assert calls == [2]  # only the last batch was generated
    assert json.loads((w / "predictions_vqav2.json").read_text()) == whole
    assert not list(w.glob("*.part*"))

    # Another config (a different prompt) does not reuse the partial answers.
    monkeypatch.setattr(runner.Evaluator, "generate", interrupted)
    calls.clear()
    with pytest.raises(KeyboardInterrupt):
        evaluate_script.evaluate(cfg, str(w))
    cfg.prompt = "Q: {} A:"
    calls.clear()
    monkeypatch.setattr(runner.Evaluator, "generate", counting)
    evaluate_script.evaluate(cfg, str(w))
    assert calls == [2, 2, 2]


def test_a_tokenizer_larger_than_the_model_vocabulary_is_refused(env, tmp_path):
    ckpt = str(tmp_path / "small_vocab")
    F.tiny_blip2("opt", seed=0, vocab_size=64, max_position_embeddings=128).save_pretrained(ckpt)
    tok = load_tokenizer(env["tok"])
    cfg = _config(env, "vqav2", **_vqa_paths(env, "val"))
    cfg.checkpoint = ckpt
    want = rf"tokenizer .* has {len(tok)} tokens but checkpoint {ckpt}'s LLM vocabulary has 64"
    with pytest.raises(ValueError, match=want):
        evaluate_script.evaluate(cfg, str(tmp_path / "out"))
    model = vpgtrans_jax.load(ckpt)
    with pytest.raises(ValueError, match=f"has {len(tok)} tokens but the model's LLM vocabulary"):
        generate_text(model, tok, np.zeros((1, 224, 224, 3), np.float32), ["hi"], max_new_tokens=1)
    text_lib.check_tokenizer_fits(tok, len(tok))  # equal sizes fit


def test_eval_config_numbers_are_checked(env, tmp_path):
    cfg = _config(env, "vqav2", **_vqa_paths(env, "val"))
    for key, value in [("batch_size", 0), ("limit", -1), ("max_bad_fraction", 1.0)]:
        bad = type(cfg)(cfg.to_dict())
        bad[key] = value
        with pytest.raises(ValueError, match=f"config.{key}={value!r}"):
            evaluate_script.evaluate(bad, str(tmp_path))


def test_a_sample_prompt_replaces_the_config_prompt(env):
    cfg = _config(env, "vqav2", **_vqa_paths(env, "val"))
    rec = {"question": "What colour?", "prompt": "Q: {} A:"}
    assert evaluate_script.prompt_text(cfg, rec) == "Q: what colour? A:"
    assert evaluate_script.prompt_text(cfg, {"question": "Why?"}) == "Question: why? Answer:"
