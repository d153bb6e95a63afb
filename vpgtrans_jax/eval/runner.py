"""Zero-shot evaluation on COCO Caption, NoCaps, VQAv2, OK-VQA and GQA, in-process.

``evaluate(config, workdir)`` generates with the protocol in the config (``eval.protocols``: beam
search, ``"\\n"`` as end of sequence), writes ``WORKDIR/predictions_TASK.json`` in the official
result format (captions ``[{"image_id", "caption"}]``, VQA ``[{"question_id", "answer"}]``, GQA
``{question_id: answer}``), scores it with ``eval.scoring.score_files`` into
``WORKDIR/metrics_TASK.json`` and prints the table. With several JAX processes each one generates
a strided share of the samples; process 0 merges the shares and scores.
``scripts/evaluate.py`` and the transfer pipeline both call it.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import jax
import numpy as np
from jax.experimental import multihost_utils
from tqdm import tqdm

from vpgtrans_jax.checkpoint.load import load
from vpgtrans_jax.data.processors import blip_image_eval, blip_question
from vpgtrans_jax.data.registry import make_source as make_data_source
from vpgtrans_jax.data.text import generation_batch, load_tokenizer, pad_id
from vpgtrans_jax.eval.scoring import format_table, score_files
from vpgtrans_jax.generation import decode_outputs, end_token_ids, generate
from vpgtrans_jax.generation.text import text_end

CAPTION_TASKS = ("coco_caption", "nocaps")
VQA_TASKS = ("vqav2", "okvqa")
TASKS = (*CAPTION_TASKS, *VQA_TASKS, "gqa")


def _need(value: str, name: str, task: str) -> str:
    if not value:
        raise ValueError(f"--config.{name} is required for task {task!r}")
    return value


def make_source(cfg: Any) -> Any:
    """The eval split's records (see ``vpgtrans_jax.data.sources``)."""
    d, task = cfg.data, cfg.task
    ann = _need(d.annotations, "data.annotations", task)
    root = _need(d.image_root, "data.image_root", task)
    if task in CAPTION_TASKS:
        return make_data_source("lavis_caption", ann_paths=ann, image_root=root)
    if task in VQA_TASKS:
        return make_data_source(
            "vqa",
            questions_path=ann,
            annotations_path=d.answers or None,
            image_root=root,
            image_pattern=d.image_pattern,
        )
    return make_data_source("gqa", questions_path=ann, image_root=root)


def caption_id_resolver(gt_path: str) -> Any:
    """Maps a caption record to the image id of the reference json.

    Integer ids pass through; a path-like id (LAVIS test files carry only ``image``) is looked
    up by file name among the reference ``images`` (NoCaps), else parsed as COCO's trailing
    number (``COCO_val2014_000000391895.jpg`` -> 391895), as LAVIS does.
    """
    by_name: dict[str, Any] = {}
    if gt_path:
        with open(gt_path) as f:
            gt = json.load(f)
        for im in gt.get("images", []) if isinstance(gt, dict) else []:
            if isinstance(im, dict) and "file_name" in im and "id" in im:
                by_name[os.path.basename(im["file_name"])] = im["id"]

    def resolve(record: dict) -> Any:
        image_id = record["image_id"]
        if isinstance(image_id, int):
            return image_id
        name = os.path.basename(str(image_id))
        if name in by_name:
            return by_name[name]
        digits = re.findall(r"\d+", os.path.splitext(name)[0])
        if not digits:
            raise ValueError(
                f"{record['key']}: cannot turn image id {image_id!r} into a reference image id "
                "(no 'file_name' match in the reference json and no trailing number)"
            )
        return int(digits[-1])

    return resolve


def prompt_text(cfg: Any, record: dict) -> str:
    if cfg.task in CAPTION_TASKS:
        return cfg.prompt
    return cfg.prompt.format(blip_question(record["question"]))


def batches(indices: Sequence[int], size: int) -> Iterator[list[int]]:
    for start in range(0, len(indices), size):
        yield list(indices[start : start + size])


def _buckets(max_len: int) -> list[int]:
    out, b = [], 8
    while b < max_len:
        out.append(b)
        b *= 2
    return [*out, max_len]


class Evaluator:
    """Generates answers / captions for batches of records with a fixed compiled shape."""

    def __init__(self, cfg: Any):
        overrides = {"dtype": cfg.dtype} if cfg.dtype else {}
        self.cfg = cfg
        self.model = load(_need(cfg.checkpoint, "checkpoint", cfg.task), **overrides)
        self.tokenizer = load_tokenizer(cfg.tokenizer or cfg.checkpoint)
        self.eos = end_token_ids(self.tokenizer, self.model.config.llm_type, cfg.end)
        self.pad = pad_id(self.tokenizer)
        self.image_size = self.model.config.vision.image_size
        self.pool = ThreadPoolExecutor(max(1, cfg.num_workers))

    def load_pixels(self, records: list[dict]) -> Future:
        """Starts decoding the batch's images in the background; the future gives float[B,S,S,3]."""

        def one(r):
            return blip_image_eval(r.get("image_path") or r["image"], self.image_size)

        futures = [self.pool.submit(one, r) for r in records]
        return self.pool.submit(lambda: np.stack([f.result() for f in futures]))

    def generate(self, records: list[dict], pixels: Any) -> list[str]:
        cfg, n = self.cfg, len(records)
        # Fixed batch shape: pad the last batch by repeating its last record (outputs dropped).
        fill = cfg.batch_size - n
        prompts = [prompt_text(cfg, r) for r in records] + [prompt_text(cfg, records[-1])] * fill
        pixels = np.concatenate([pixels, np.repeat(pixels[-1:], fill, axis=0)])
        text = generation_batch(
            self.tokenizer, prompts, cfg.max_prompt_len, buckets=_buckets(cfg.max_prompt_len)
        )
        g = cfg.generation
        tokens = generate(
            self.model,
            pixels,
            text["input_ids"],
            text["attention_mask"],
            image_offsets=text.get("image_offset"),  # prompts with <ImageHere>
            max_new_tokens=g.max_new_tokens,
            min_new_tokens=g.min_new_tokens,
            num_beams=g.num_beams,
            length_penalty=g.length_penalty,
            repetition_penalty=g.repetition_penalty,
            eos_token_id=self.eos,
            pad_token_id=self.pad,
        )
        return decode_outputs(self.tokenizer, tokens, self.eos, self.pad, text_end(cfg.end))[:n]


def run_share(cfg: Any, source: Any, indices: list[int], show_progress: bool) -> list[tuple]:
    """Generates for ``indices`` of ``source``; returns (index, output) pairs."""
    ev = Evaluator(cfg)
    out: list[tuple] = []
    chunks = list(batches(indices, cfg.batch_size))
    bar = tqdm(total=len(indices), desc=f"{cfg.task}", unit="sample", disable=not show_progress)
    pending = ev.load_pixels([source[i] for i in chunks[0]]) if chunks else None
    for k, chunk in enumerate(chunks):
        records = [source[i] for i in chunk]
        pixels = pending.result()
        if k + 1 < len(chunks):  # decode the next batch's images while this one generates
            pending = ev.load_pixels([source[i] for i in chunks[k + 1]])
        out += list(zip(chunk, ev.generate(records, pixels)))
        bar.update(len(chunk))
    bar.close()
    return out


def to_result_format(cfg: Any, source: Any, outputs: list[tuple]) -> Any:
    """(index, text) pairs in dataset order -> the task's official result object."""
    outputs = sorted(outputs)
    if cfg.task in CAPTION_TASKS:
        resolve = caption_id_resolver(cfg.data.gt)
        result, seen = [], set()
        for i, caption in outputs:
            image_id = resolve(source[i])
            if image_id not in seen:  # one caption per image, as LAVIS dedupes
                seen.add(image_id)
                result.append({"image_id": image_id, "caption": caption})
        return result
    if cfg.task in VQA_TASKS:
        return [{"question_id": source[i]["question_id"], "answer": a} for i, a in outputs]
    return {str(source[i]["question_id"]): a for i, a in outputs}


def score(cfg: Any, pred_path: str) -> dict | None:
    """Metrics dict, or None when the config names no ground truth (predict-only run)."""
    s, d = cfg.scoring, cfg.data
    kw: dict[str, Any] = dict(allow_subset=cfg.limit > 0, log=print)
    if cfg.task in CAPTION_TASKS:
        if not d.gt:
            return None
        metrics = [m.strip() for m in s.get("metrics", "").split(",") if m.strip()]
        if metrics:
            kw["caption_metrics"] = metrics
        return score_files(cfg.task, pred_path, d.gt, spice=s.spice, **kw)
    if cfg.task in VQA_TASKS:
        if not d.answers:
            return None
        return score_files(
            cfg.task,
            pred_path,
            d.answers,
            d.annotations,
            vqa_rules=s.vqa_rules,
            lemmatize=s.lemmatize,
            **kw,
        )
    if not source_has_answers(d.annotations):
        return None
    return score_files("gqa", pred_path, d.annotations, lemmatize=s.lemmatize, **kw)


def source_has_answers(gqa_questions: str) -> bool:
    with open(gqa_questions) as f:
        data = json.load(f)
    entries = data.values() if isinstance(data, dict) else data
    return all(isinstance(e, dict) and "answer" in e for e in entries)


def evaluate(cfg: Any, workdir: str) -> dict | None:
    """Runs generation (this process's share), merges on process 0, scores; returns metrics."""
    if cfg.task not in TASKS:
        raise ValueError(f"config.task={cfg.task!r}: expected one of {TASKS}")
    if cfg.batch_size < 1:
        raise ValueError(f"config.batch_size={cfg.batch_size}: expected >= 1")
    os.makedirs(workdir, exist_ok=True)
    source = make_source(cfg)
    total = len(source) if cfg.limit <= 0 else min(cfg.limit, len(source))
    pid, nproc = jax.process_index(), jax.process_count()
    outputs = run_share(cfg, source, list(range(total))[pid::nproc], show_progress=pid == 0)
    part = os.path.join(workdir, f"predictions_{cfg.task}.part{pid}-of-{nproc}.json")
    with open(part, "w") as f:
        json.dump(outputs, f)
    if nproc > 1:
        multihost_utils.sync_global_devices("evaluate: shares written")
    if pid != 0:
        return None
    merged: list[tuple] = []
    for k in range(nproc):
        path = os.path.join(workdir, f"predictions_{cfg.task}.part{k}-of-{nproc}.json")
        with open(path) as f:
            merged += [tuple(x) for x in json.load(f)]
        os.remove(path)
    pred_path = os.path.join(workdir, f"predictions_{cfg.task}.json")
    with open(pred_path, "w") as f:
        json.dump(to_result_format(cfg, source, merged), f)
    print(f"wrote {pred_path} ({len(merged)} samples)")
    metrics = score(cfg, pred_path)
    if metrics is None:
        print("no ground truth in the config (predict-only run): nothing scored")
        return None
    metrics["config"] = cfg.to_dict()
    metrics_path = os.path.join(workdir, f"metrics_{cfg.task}.json")
    with open(metrics_path, "w") as f:
        json.dump(metrics, f, indent=1)
    print(format_table(metrics))
    print(f"wrote {metrics_path}")
    return metrics
