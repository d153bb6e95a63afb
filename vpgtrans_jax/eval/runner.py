"""Zero-shot evaluation on COCO Caption, NoCaps, VQAv2, OK-VQA and GQA, in-process.

``evaluate(config, workdir)`` generates with the protocol in the config (``eval.protocols``: beam
search, ``"\\n"`` as end of sequence), writes ``WORKDIR/predictions_TASK.json`` in the official
result format (captions ``[{"image_id", "caption"}]``, VQA ``[{"question_id", "answer"}]``, GQA
``{question_id: answer}``), scores it with ``eval.scoring.score_files`` into
``WORKDIR/metrics_TASK.json`` and prints the table. With several JAX processes each one generates
a strided share of the samples; process 0 merges the shares and scores.
``scripts/evaluate.py`` and the transfer pipeline both call it.

A sample whose image is missing, corrupt or over ``max_image_pixels`` is skipped and counted, as
in training: the metrics JSON (``bad_samples``) and the printed summary report them, the
predictions leave them out (scored as a subset), and more than ``max_bad_fraction`` of them is a
``BadDataError``. Each process appends its answers to
``WORKDIR/predictions_TASK.part<p>-of-<n>.jsonl`` as every batch completes; an interrupted
evaluation rerun with the same config continues after the last completed batch (a config that
would change the answers starts over).
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import jax
import numpy as np
from jax.experimental import multihost_utils
from tqdm import tqdm

from vpgtrans_jax import paths, sharding
from vpgtrans_jax.checkpoint.load import load
from vpgtrans_jax.data.processors import blip_image_eval, blip_question
from vpgtrans_jax.data.registry import make_source as make_data_source
from vpgtrans_jax.data.text import check_tokenizer_fits, generation_batch, load_tokenizer, pad_id
from vpgtrans_jax.data.transforms import SLOT, fill_prompt, own_prompt
from vpgtrans_jax.errors import BadDataError, ConfigError
from vpgtrans_jax.eval.scoring import format_table, score_files
from vpgtrans_jax.generation import decode_outputs, end_token_ids, generate
from vpgtrans_jax.generation.text import text_end
from vpgtrans_jax.outputs import check_separate

CAPTION_TASKS = ("coco_caption", "nocaps")
VQA_TASKS = ("vqav2", "okvqa")
TASKS = (*CAPTION_TASKS, *VQA_TASKS, "gqa")
# Fields that do not change any answer: a partial evaluation made with other values resumes.
RESUMABLE_ACROSS = ("num_workers", "limit", "max_bad_fraction")
MIN_SAMPLES_BEFORE_ERROR = 100  # as training: a bad fraction is judged on enough samples
_SHOWN_BAD = 10

log = logging.getLogger(__name__)


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
        gt = json.loads(paths.read_text(gt_path))
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
    """The record's prompt: its own ``prompt`` field, else the config's; a VQA template's ``{}``
    gets the (processed) question."""
    own = own_prompt(record)
    template = cfg.prompt if own is None else own
    if cfg.task in CAPTION_TASKS or SLOT not in template:
        return template
    return fill_prompt(template, blip_question(record["question"]))


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
        check_tokenizer_fits(
            self.tokenizer, self.model.config.llm.vocab_size, f"checkpoint {cfg.checkpoint}"
        )
        self.eos = end_token_ids(self.tokenizer, self.model.config.llm_type, cfg.end)
        self.pad = pad_id(self.tokenizer)
        self.image_size = self.model.config.vision.image_size
        self.pool = ThreadPoolExecutor(max(1, cfg.num_workers))

    def load_pixels(self, records: list[dict]) -> Future:
        """Starts decoding the batch's images in the background; the future gives one
        ``(float[S, S, 3] or None, None or why the image is bad)`` per record."""
        limit = self.cfg.max_image_pixels

        def one(r):
            try:
                image = r.get("image_path") or r.get("image")
                if image is None:
                    raise ValueError("record has neither 'image' bytes nor 'image_path'")
                return blip_image_eval(image, self.image_size, limit), None
            except Exception as e:  # noqa: BLE001 - any unreadable image is a counted bad sample
                return None, f"{type(e).__name__}: {e}"

        futures = [self.pool.submit(one, r) for r in records]
        return self.pool.submit(lambda: [f.result() for f in futures])

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


class Progress:
    """One process's share of an evaluation on disk: a header naming the config, then one JSON
    line of ``[index, answer]`` pairs per completed batch (``Progress.path``)."""

    def __init__(self, workdir: str, cfg: Any, pid: int, nproc: int):
        self.path = share_path(workdir, cfg.task, pid, nproc)
        kept = {k: v for k, v in cfg.to_dict().items() if k not in RESUMABLE_ACROSS}
        self.header = {"config": json.loads(json.dumps(kept, default=str)), "share": [pid, nproc]}
        self.done: dict[int, str] = {}
        lines = _read_share(self.path)
        if lines and lines[0] == self.header:
            for line in lines[1:]:
                self.done.update({int(i): a for i, a in line.get("done", [])})
            if self.done:
                log.info("resuming: %d answers already in %s", len(self.done), self.path)
        elif lines:
            log.warning("%s was made by another evaluation config; starting over", self.path)
        # Rewritten whole: drops a line cut short by a crash, so appending stays valid JSONL.
        lines = [self.header] + ([{"done": sorted(self.done.items())}] if self.done else [])
        paths.write_text(self.path, "".join(json.dumps(x) + "\n" for x in lines))
        self._f = paths.AppendFile(self.path)

    def _write(self, obj: Any) -> None:
        self._f.write(json.dumps(obj) + "\n")
        self._f.flush()

    def add(self, answers: list[tuple[int, str]]) -> None:
        self.done.update(answers)
        self._write({"done": answers})
        self._f.sync()

    def close(self) -> None:
        self._f.close()


def share_path(workdir: str, task: str, pid: int, nproc: int) -> str:
    return paths.join(workdir, f"predictions_{task}.part{pid}-of-{nproc}.jsonl")


def _read_share(path: str) -> list[dict]:
    if not paths.exists(path):
        return []
    out = []
    for line in paths.read_text(path).splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:
            break  # the line a crash cut short, and anything after it
    return out


class BadSamples:
    """Unreadable images of one share: counted, a few named, fatal beyond ``max_bad_fraction``."""

    def __init__(self, max_fraction: float):
        self.max_fraction = max_fraction
        self.items: list[tuple[int, str, str]] = []  # (index, key, reason)
        self.seen = 0

    def add(self, seen: int, bad: list[tuple[int, str, str]], final: bool = False) -> None:
        self.seen += seen
        for item in bad:
            self.items.append(item)
            if len(self.items) <= 20:
                log.warning("skipped bad sample %s: %s", item[1], item[2])
        judged = self.seen >= MIN_SAMPLES_BEFORE_ERROR or final
        if judged and len(self.items) > self.max_fraction * self.seen:
            shown = "; ".join(f"{k}: {r}" for _, k, r in self.items[-5:])
            raise BadDataError(
                f"{len(self.items)} of {self.seen} samples were bad (more than "
                f"max_bad_fraction={self.max_fraction}); recent examples: {shown}"
            )


def run_share(
    cfg: Any, source: Any, indices: list[int], show_progress: bool, progress: Progress
) -> BadSamples:
    """Generates for the ``indices`` of ``source`` not yet in ``progress`` (which receives each
    batch's answers as it completes); returns the share's bad samples."""
    ev = Evaluator(cfg)
    bad = BadSamples(cfg.max_bad_fraction)
    todo = [i for i in indices if i not in progress.done]
    chunks = list(batches(todo, cfg.batch_size))
    bar = tqdm(total=len(indices), desc=f"{cfg.task}", unit="sample", disable=not show_progress)
    bar.update(len(indices) - len(todo))
    pending = ev.load_pixels([source[i] for i in chunks[0]]) if chunks else None
    for k, chunk in enumerate(chunks):
        records = [source[i] for i in chunk]
        loaded = pending.result()
        if k + 1 < len(chunks):  # decode the next batch's images while this one generates
            pending = ev.load_pixels([source[i] for i in chunks[k + 1]])
        good = [j for j, (_, why) in enumerate(loaded) if why is None]
        answers = []
        if good:
            pixels = np.stack([loaded[j][0] for j in good])
            texts = ev.generate([records[j] for j in good], pixels)
            answers = [(chunk[j], t) for j, t in zip(good, texts)]
        progress.add(answers)
        failed = [
            (chunk[j], records[j].get("key", str(chunk[j])), why)
            for j, (_, why) in enumerate(loaded)
            if why is not None
        ]
        bad.add(len(chunk), failed, final=k + 1 == len(chunks))
        bar.update(len(chunk))
    bar.close()
    return bad


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


def score(cfg: Any, pred_path: str, subset: bool = False) -> dict | None:
    """Metrics dict, or None when the config names no ground truth (predict-only run).

    ``subset``: some samples were skipped (bad images), score the predicted ones."""
    s, d = cfg.scoring, cfg.data
    kw: dict[str, Any] = dict(allow_subset=cfg.limit > 0 or subset, log=print)
    if cfg.task in CAPTION_TASKS:
        if not d.gt:
            return None
        metrics = [m.strip() for m in s.get("metrics", "").split(",") if m.strip()]
        if metrics:
            kw["caption_metrics"] = metrics
        return score_files(cfg.task, pred_path, paths.local_copy(d.gt), spice=s.spice, **kw)
    if cfg.task in VQA_TASKS:
        if not d.answers:
            return None
        return score_files(
            cfg.task,
            pred_path,
            paths.local_copy(d.answers),
            paths.local_copy(d.annotations),
            vqa_rules=s.vqa_rules,
            lemmatize=s.lemmatize,
            **kw,
        )
    if not source_has_answers(d.annotations):
        return None
    questions = paths.local_copy(d.annotations)
    return score_files("gqa", pred_path, questions, lemmatize=s.lemmatize, **kw)


def source_has_answers(gqa_questions: str) -> bool:
    data = json.loads(paths.read_text(gqa_questions))
    entries = data.values() if isinstance(data, dict) else data
    return all(isinstance(e, dict) and "answer" in e for e in entries)


def check_config(cfg: Any) -> None:
    """Numeric fields of an eval config, each error naming its field."""
    if cfg.task not in TASKS:
        raise ConfigError(f"config.task={cfg.task!r}: expected one of {TASKS}")
    ints = dict(batch_size=1, limit=0, num_workers=0, max_prompt_len=1, max_image_pixels=1)
    for key, low in ints.items():
        value = cfg[key]
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ConfigError(f"config.{key}={value!r}: expected an integer >= {low}")
    f = cfg.max_bad_fraction
    if isinstance(f, bool) or not isinstance(f, int | float) or not 0 <= f < 1:
        raise ConfigError(f"config.max_bad_fraction={f!r}: expected a number in [0, 1)")


def check_outputs(cfg: Any, workdir: str) -> None:
    """No file ``evaluate`` writes in ``workdir`` may be one of the config's input files."""
    d = cfg.data
    inputs = {f"--config.data.{k}": d.get(k) or None for k in ("annotations", "answers", "gt")}
    pid, nproc = jax.process_index(), jax.process_count()
    for name in (f"predictions_{cfg.task}.json", f"metrics_{cfg.task}.json"):
        check_separate(paths.join(workdir, name), inputs, out_label="the output")
    check_separate(share_path(workdir, cfg.task, pid, nproc), inputs, out_label="the output")


def evaluate(cfg: Any, workdir: str) -> dict | None:
    """Runs generation (this process's share), merges on process 0, scores; returns metrics.

    ``workdir`` may be a URL (``gs://``): shares, predictions and metrics are written there;
    scoring reads local copies."""
    check_config(cfg)
    sharding.maybe_initialize_distributed()
    workdir = paths.abspath(workdir)
    check_outputs(cfg, workdir)
    paths.makedirs(workdir)
    source = make_source(cfg)
    total = len(source) if cfg.limit <= 0 else min(cfg.limit, len(source))
    pid, nproc = jax.process_index(), jax.process_count()
    progress = Progress(workdir, cfg, pid, nproc)
    try:
        bad = run_share(
            cfg, source, list(range(total))[pid::nproc], show_progress=pid == 0, progress=progress
        )
    finally:
        progress.close()
    share = paths.AppendFile(progress.path)  # the share's bad samples, for process 0's report
    share.write(json.dumps({"bad": bad.items}) + "\n")
    share.close()
    if nproc > 1:
        multihost_utils.sync_global_devices("evaluate: shares written")
    if pid != 0:
        return None
    merged: list[tuple] = []
    bad_items: list[list] = []
    for k in range(nproc):
        lines = _read_share(share_path(workdir, cfg.task, k, nproc))
        for line in lines[1:]:
            merged += [(int(i), a) for i, a in line.get("done", [])]
        bad_items += next((ln["bad"] for ln in reversed(lines) if "bad" in ln), [])
    merged = sorted((i, a) for i, a in dict(merged).items() if i < total)
    pred_path = paths.join(workdir, f"predictions_{cfg.task}.json")
    paths.write_text(pred_path, json.dumps(to_result_format(cfg, source, merged)))
    for k in range(nproc):
        paths.remove(share_path(workdir, cfg.task, k, nproc))
    print(f"wrote {pred_path} ({len(merged)} samples)")
    bad_report = {
        "count": len(bad_items),
        "of": total,
        "examples": [{"key": key, "reason": why} for _, key, why in bad_items[:_SHOWN_BAD]],
    }
    if bad_items:
        print(f"skipped {len(bad_items)} of {total} samples: unreadable images (bad_samples)")
    metrics = score(cfg, paths.local_copy(pred_path), subset=bool(bad_items))
    if metrics is None:
        print("no ground truth in the config (predict-only run): nothing scored")
        return None
    metrics["bad_samples"] = bad_report
    metrics["config"] = cfg.to_dict()
    metrics_path = paths.join(workdir, f"metrics_{cfg.task}.json")
    paths.write_text(metrics_path, json.dumps(metrics, indent=1))
    print(format_table(metrics))
    print(f"wrote {metrics_path}")
    return metrics
