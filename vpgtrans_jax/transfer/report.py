"""``report.json`` / ``report.md`` of a transfer: per-stage metrics, steps, samples, time, FLOPs.

``report.json`` layout::

    {"format": "vpgtrans_jax.transfer_report", "version": 1, "name", "workdir", "complete",
     "stopped" (message or null), "source": {"checkpoint", "llm"}, "target": {"llm"},
     "steps": [{"name", "kind", "stage", "task", "output", "state": "done" | "pending",
                "this_run": "ran" | "skipped" | "stopped" | "not reached", "wall_time_s"}],
     "converter": {"heldout_cosine", "train_cosine", "wall_time_s", "flops"} | null,
     "stages": [{"name": "source" | "init" | "stage1" | ..., "training": {record} | null,
                 "eval": {task: {"headline": [metric, value], "metrics", "num_samples",
                                 "wall_time_s"}}}],
     "totals": {"train_steps", "train_samples", "train_wall_time_s", "train_flops",
                "train_flops_xla", "wall_time_s" (every recorded step), "flops"}}

Caption metrics are reported x100 (as in the paper's tables); VQA / GQA accuracies in %.
"""

from __future__ import annotations

import json
import os
from typing import Any

FORMAT = "vpgtrans_jax.transfer_report"
VERSION = 1


def headline(task: str, metrics: Any) -> tuple[str, float] | None:
    """The number a paper table shows for ``task``: CIDEr for captions, overall accuracy else."""
    if not isinstance(metrics, dict):
        return None
    if "CIDEr" in metrics:
        return "CIDEr", metrics["CIDEr"]
    if "overall" in metrics:
        return "accuracy", metrics["overall"]
    return None


def eval_metrics(raw: dict[str, Any] | None) -> dict[str, Any] | None:
    """The metrics part of ``metrics_<task>.json``: captions x100, accuracies as written."""
    if raw is None:
        return None
    if isinstance(raw.get("metrics"), dict):
        return {k: round(100 * v, 2) for k, v in raw["metrics"].items()}
    if isinstance(raw.get("accuracy"), dict):
        return raw["accuracy"]
    return None


def _sum(values: list[Any]) -> float | None:
    vals = [v for v in values if isinstance(v, int | float)]
    return float(sum(vals)) if vals else None


def build_report(pipe: Any, this_run: dict[str, str], stopped: str | None) -> dict[str, Any]:
    """The report dict from a ``TransferPipeline``'s plan and records."""
    steps, stages = [], {}
    for step in pipe.steps:
        rec = pipe.record(step.name)
        done = os.path.exists(step.output)
        steps.append(
            {
                "name": step.name,
                "kind": step.kind,
                "stage": step.stage,
                "task": step.task,
                "output": step.output,
                "state": "done" if done else "pending",
                "this_run": this_run.get(step.name, "not reached"),
                "wall_time_s": None if rec is None else rec.get("wall_time_s"),
            }
        )
        if step.stage is None:
            continue
        row = stages.setdefault(step.stage, {"name": step.stage, "training": None, "eval": {}})
        if step.kind == "train" and rec is not None:
            row["training"] = {k: v for k, v in rec.items() if k not in ("name", "kind")}
        if step.kind == "eval" and rec is not None:
            metrics = rec.get("metrics")
            row["eval"][step.task] = {
                "headline": headline(step.task, metrics),
                "metrics": metrics,
                "num_samples": rec.get("num_samples"),
                "wall_time_s": rec.get("wall_time_s"),
            }
    conv = pipe.record("converter")
    converter = None
    if conv is not None:
        m = conv.get("metrics") or {}
        converter = {
            "heldout_cosine": m.get("heldout_cosine"),
            "train_cosine": m.get("train_cosine"),
            "wall_time_s": conv.get("wall_time_s"),
            "flops": conv.get("flops"),
        }
    training = [r["training"] for r in stages.values() if r["training"]]
    records = [pipe.record(s.name) or {} for s in pipe.steps]
    totals = {
        "train_steps": _sum([t.get("steps") for t in training]),
        "train_samples": _sum([t.get("samples") for t in training]),
        "train_wall_time_s": _sum([t.get("wall_time_s") for t in training]),
        "train_flops": _sum([t.get("flops") for t in training]),
        "train_flops_xla": _sum([t.get("flops_xla") for t in training]),
        "wall_time_s": _sum([r.get("wall_time_s") for r in records]),
        "flops": _sum([r.get("flops") for r in records]),
    }
    return {
        "format": FORMAT,
        "version": VERSION,
        "name": pipe.cfg.name,
        "workdir": pipe.workdir,
        "complete": all(s["state"] == "done" for s in steps),
        "stopped": stopped,
        "source": {"checkpoint": pipe.source_checkpoint, "llm": pipe.source_llm},
        "target": {"llm": pipe.target_llm},
        "steps": steps,
        "converter": converter,
        "stages": list(stages.values()),
        "totals": totals,
    }


def _fmt(v: Any, spec: str = ".1f") -> str:
    if v is None:
        return "–"
    if isinstance(v, float) and spec == "flops":
        return f"{v:.3g}"
    return format(v, spec) if isinstance(v, int | float) else str(v)


def render_markdown(r: dict[str, Any]) -> str:
    """``report.md``: the steps, the training cost per stage and the evaluation table."""
    lines = [
        f"# VPGTrans transfer report: {r['name']}",
        "",
        f"- workdir: `{r['workdir']}`",
        f"- source: `{r['source']['checkpoint']}` (LLM `{r['source']['llm']}`)",
        f"- target LLM: `{r['target']['llm']}`",
        f"- status: {'complete' if r['complete'] else 'incomplete'}"
        + (f" (stopped: {r['stopped']})" if r["stopped"] else ""),
    ]
    if r["converter"]:
        c = r["converter"]
        lines.append(
            f"- word converter: held-out cosine {_fmt(c['heldout_cosine'], '.4f')}, "
            f"train cosine {_fmt(c['train_cosine'], '.4f')}"
        )
    lines += [
        "",
        "## Training cost per stage",
        "",
        "| stage | steps | samples | wall time (s) | FLOPs (analytic) | FLOPs (XLA) | final loss |",
        "|---|---|---|---|---|---|---|",
    ]
    for s in r["stages"]:
        t = s["training"]
        if t is None:
            continue
        lines.append(
            f"| {s['name']} | {_fmt(t.get('steps'), 'd')} | {_fmt(t.get('samples'), 'd')} | "
            f"{_fmt(t.get('wall_time_s'))} | {_fmt(t.get('flops'), 'flops')} | "
            f"{_fmt(t.get('flops_xla'), 'flops')} | {_fmt(t.get('final_loss'), '.4f')} |"
        )
    tot = r["totals"]
    lines.append(
        f"| **total** | {_fmt(tot['train_steps'], '.0f')} | {_fmt(tot['train_samples'], '.0f')} "
        f"| {_fmt(tot['train_wall_time_s'])} | {_fmt(tot['train_flops'], 'flops')} | "
        f"{_fmt(tot['train_flops_xla'], 'flops')} | |"
    )
    tasks = sorted({t for s in r["stages"] for t in s["eval"]})
    if tasks:
        lines += [
            "",
            "## Evaluation",
            "",
            "| model | " + " | ".join(tasks) + " |",
            "|---" * (len(tasks) + 1) + "|",
        ]
        for s in r["stages"]:
            if not s["eval"]:
                continue
            cells = []
            for task in tasks:
                h = (s["eval"].get(task) or {}).get("headline")
                cells.append("–" if not h else f"{h[0]} {h[1]:.2f}")
            lines.append(f"| {s['name']} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "## Steps",
        "",
        "| step | state | this run | wall time (s) |",
        "|---|---|---|---|",
    ]
    for st in r["steps"]:
        lines.append(
            f"| {st['name']} | {st['state']} | {st['this_run']} | {_fmt(st['wall_time_s'])} |"
        )
    lines.append(f"\nAll recorded steps: {_fmt(tot['wall_time_s'])} s wall time.\n")
    return "\n".join(lines)


def write_report(pipe: Any, this_run: dict[str, str], stopped: str | None) -> dict[str, Any]:
    """Writes ``report.json`` and ``report.md`` into the pipeline's workdir; returns the dict."""
    r = build_report(pipe, this_run, stopped)
    for name, text in (
        ("report.json", json.dumps(r, indent=1, default=str)),
        ("report.md", render_markdown(r)),
    ):
        path = os.path.join(pipe.workdir, name)
        with open(path + ".tmp", "w") as f:
            f.write(text)
        os.replace(path + ".tmp", path)
    return r
