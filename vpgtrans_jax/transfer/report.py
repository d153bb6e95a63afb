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
                "train_flops_xla", "wall_time_s" (every recorded step), "flops"},
     "curves": {arm: [{"point", "epoch", "samples", "flops", "scores": {task: value}}]} | null,
     "comparison": {"speedup": {baseline: {task: speedup.speedup(...)}},
                    "final": {arm: {task: value}}, "best": {arm: {task: value}}} | null,
     "figures": {task: png path}}

``curves`` and ``comparison`` exist when the transfer has baseline arms (``config.baselines``):
see ``speedup.py`` for the speed-up rule. Caption metrics are reported x100 (as in the paper's
tables); VQA / GQA accuracies in %.
"""

from __future__ import annotations

import json
from typing import Any

from vpgtrans_jax import paths
from vpgtrans_jax.transfer import figures as figs
from vpgtrans_jax.transfer import speedup

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


def headline_value(task: str, metrics: Any) -> float | None:
    """The headline number of ``task`` (``headline``), or None."""
    h = headline(task, metrics)
    return None if h is None else float(h[1])


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
        done = pipe.done(step)
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
    curves = comparison = None
    plan = pipe.curve_plan() if getattr(pipe, "arms", None) else []
    if plan:
        conv_flops = (conv or {}).get("flops") or 0.0
        curves = speedup.build_curves(plan, pipe.record, headline_value, conv_flops)
        comparison = speedup.json_safe(speedup.compare(curves))
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
        "curves": curves,
        "comparison": comparison,
        "figures": {},
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
    if r.get("comparison"):
        lines += payoff_markdown(r["comparison"], r.get("figures") or {}, r["workdir"])
    return "\n".join(lines)


def _x(v: Any) -> str:
    if v is None:
        return "–"
    return "∞" if v == "inf" else f"{v:.2f}x"


def payoff_markdown(comp: dict[str, Any], figures: dict[str, str], root: str) -> list[str]:
    """The "Does the transfer pay off?" section of one run (one seed)."""
    lines = [
        "## Does the transfer pay off?",
        "",
        "Speed-up (VPGTrans paper, Table 3) = epochs the baseline needs to reach its best score "
        "/ epochs VPGTrans needs to reach (>=) it, stage 1 counted as spent epochs; the FLOPs "
        "column is the same ratio in training FLOPs.",
        "",
        "| baseline | metric | speed-up (epochs) | speed-up (FLOPs) | outcome | baseline best "
        "(at epoch) | VPGTrans reaches it at epoch |",
        "|---|---|---|---|---|---|---|",
    ]
    for arm, by_task in comp["speedup"].items():
        for task, res in by_task.items():
            lines.append(
                f"| {arm} | {task} | {_x(res['epochs'])} | {_x(res['flops'])} | {res['status']} "
                f"| {_fmt(res['baseline_best'], '.2f')} ({_fmt(res['baseline_epoch'], 'g')}) | "
                f"{_fmt(res['method_epoch'], 'g')} |"
            )
    tasks = sorted({t for by in comp["final"].values() for t in by})
    lines += ["", "| arm | " + " | ".join(f"{t} final | {t} best" for t in tasks) + " |"]
    lines.append("|---" * (2 * len(tasks) + 1) + "|")
    for arm in comp["final"]:
        cells = [f"{_fmt(comp['final'][arm][t], '.2f')} | {_fmt(comp['best'][arm][t], '.2f')}"
                 for t in tasks]  # fmt: skip
        lines.append(f"| {arm} | " + " | ".join(cells) + " |")
    for task, path in figures.items():
        lines += ["", f"![{task}]({paths.relpath(path, root)})"]
    return [*lines, ""]


def draw_figures(r: dict[str, Any], out_dir: str) -> dict[str, str]:
    """One PNG per metric of a run's curves (``figures.plot_task``); ``{task: path}``."""
    out: dict[str, str] = {}
    comp = r["comparison"]
    tasks = sorted({t for pts in r["curves"].values() for q in pts for t in q["scores"]})
    for task in tasks:
        data = figs.series([r["curves"]], task)
        if not data:
            continue
        results = {arm: by[task] for arm, by in comp["speedup"].items() if task in by}
        tfs = results.get("tfs") or next(iter(results.values()), None)
        metric = "CIDEr" if "caption" in task or "nocaps" in task else "accuracy (%)"
        out[task] = figs.plot_task(
            data,
            paths.join(out_dir, f"{task}.png"),
            title=f"{r['name']}: {task} ({metric}) per arm",
            metric=metric,
            baseline_best=None if tfs is None else tfs["baseline_best"],
            notes=figs.speedup_notes(results, seeds=False),
        )
    return out


def write_report(
    pipe: Any, this_run: dict[str, str], stopped: str | None, figures: bool = False
) -> dict[str, Any]:
    """Writes ``report.json`` and ``report.md`` into the pipeline's workdir (and with
    ``figures``, the PNGs of the arms' curves into ``figures/``); returns the dict. Each file
    is written whole (renamed into place on disk, one object PUT in a bucket)."""
    r = build_report(pipe, this_run, stopped)
    fig_dir = paths.join(pipe.workdir, "figures")
    if figures and r["curves"]:
        r["figures"] = draw_figures(r, fig_dir)
    elif r["curves"] and paths.isdir(fig_dir):  # drawn by an earlier run's end
        r["figures"] = {
            f[: -len(".png")]: paths.join(fig_dir, f)
            for f in paths.listdir(fig_dir)
            if f.endswith(".png") and not f.endswith(".tmp.png")
        }
    for name, text in (
        ("report.json", json.dumps(r, indent=1, default=str)),
        ("report.md", render_markdown(r)),
    ):
        paths.write_text(paths.join(pipe.workdir, name), text)
    return r
