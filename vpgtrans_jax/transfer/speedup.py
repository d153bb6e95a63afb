"""Does the transfer pay off? Score curves per arm and the paper's speed-up rule.

The VPGTrans paper (Table 3) measures the speed-up of a transfer as

    speed-up = epochs the from-scratch run (TFS) needs to reach its best score
               / epochs VPGTrans needs to beat that score

per metric. Here:

- An arm's curve is its evaluation points in order of *spent* training: VPGTrans's points are the
  merged model (epoch 0), stage 1's end (its epochs count as spent: 1 in the paper's recipe) and
  each epoch of stage 2 after it; a baseline's are its own epochs (and its init, epoch 0, when
  evaluated).
- The baseline's epochs-to-best is the first point where it reaches its maximum (ties: the
  earliest). VPGTrans's epochs-to-beat is the first point whose score is >= that maximum (a tie
  counts as beating it).
- The same ratio in training FLOPs (samples x analytic FLOPs per sample, ``train.flops``; the
  word converter's FLOPs are charged to VPGTrans) says what the cheaper stage 1 saves.
- Outcomes: ``ok`` (a finite speed-up); ``not_reached`` (VPGTrans never reaches the baseline's
  best: no speed-up, and ``upper_bound`` = what it would be if the very next point reached it);
  ``reached_untrained`` (the merged model already beats it: unbounded); ``baseline_untrained``
  (the baseline's best is its untrained start: nothing to speed up); ``missing`` (no points).

Across seeds the report gives the median, mean and min–max of the per-seed speed-ups; there a
``not_reached`` seed counts as 0 and a ``reached_untrained`` one as infinity (the median stays
defined; the mean is then reported as None).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Mapping, Sequence
from typing import Any

METHOD = "vpgtrans"
STATUSES = ("ok", "not_reached", "reached_untrained", "baseline_untrained", "missing")


def speedup(
    baseline: Sequence[Mapping[str, Any]], method: Sequence[Mapping[str, Any]]
) -> dict[str, Any]:
    """The paper's speed-up of ``method`` over ``baseline`` for one metric.

    Args:
      baseline, method: curves, points ``{"epoch", "flops", "score"}`` (``score`` None = not
        evaluated; such points are ignored); any order.

    Returns:
      ``{"status", "epochs", "flops", "baseline_best", "baseline_epoch", "baseline_flops",
      "method_epoch", "method_flops", "method_best", "upper_bound"}``; ``epochs`` / ``flops``
      are the speed-ups (``math.inf`` for ``reached_untrained``, None unless ``ok``).
    """
    b = sorted((p for p in baseline if p.get("score") is not None), key=lambda p: p["epoch"])
    m = sorted((p for p in method if p.get("score") is not None), key=lambda p: p["epoch"])
    out: dict[str, Any] = dict.fromkeys(
        (
            "epochs",
            "flops",
            "baseline_best",
            "baseline_epoch",
            "baseline_flops",
            "method_epoch",
            "method_flops",
            "method_best",
            "upper_bound",
        )  # fmt: skip
    )
    if not b or not m:
        return {**out, "status": "missing"}
    best = max(p["score"] for p in b)
    first = next(p for p in b if p["score"] == best)
    out.update(
        baseline_best=best,
        baseline_epoch=first["epoch"],
        baseline_flops=first["flops"],
        method_best=max(p["score"] for p in m),
    )
    if first["epoch"] <= 0:
        return {**out, "status": "baseline_untrained"}
    reach = next((p for p in m if p["score"] >= best), None)
    if reach is None:
        last = m[-1]
        bound = first["epoch"] / last["epoch"] if last["epoch"] > 0 else None
        return {**out, "status": "not_reached", "upper_bound": bound}
    out.update(method_epoch=reach["epoch"], method_flops=reach["flops"])
    if reach["epoch"] <= 0:
        return {**out, "status": "reached_untrained", "epochs": math.inf, "flops": math.inf}
    return {
        **out,
        "status": "ok",
        "epochs": first["epoch"] / reach["epoch"],
        "flops": first["flops"] / reach["flops"] if reach["flops"] else None,
    }


def _unit_cost(rec: Mapping[str, Any], epoch: int | None) -> dict[str, float] | None:
    """(epochs, samples, FLOPs) a training unit spent to reach ``epoch`` (None = its end)."""
    if epoch is None:
        return {
            "epoch": float(rec["num_epochs"]),
            "samples": float(rec["samples"]),
            "flops": float(rec["flops"]),
        }
    export = (rec.get("epoch_exports") or {}).get(str(epoch))
    if export is not None:
        steps = export["step"]
    elif rec.get("dataset_size"):
        steps = math.ceil(epoch * rec["dataset_size"] / rec["batch_size"])
    else:
        return None
    return {
        "epoch": float(epoch),
        "samples": float(steps * rec["batch_size"]),
        "flops": float(steps * rec["flops_per_step"]),
    }


def build_curves(
    plan: Sequence[Mapping[str, Any]],
    record: Callable[[str], Mapping[str, Any] | None],
    score: Callable[[str, Any], float | None],
    converter_flops: float = 0.0,
) -> dict[str, list[dict[str, Any]]]:
    """Curves per arm from a pipeline's ``curve_plan()`` and its step records.

    Each point: ``{"point", "epoch" (spent, cumulative), "samples", "flops", "scores": {task:
    score(task, the eval record's metrics) or None}}``. Points whose training is not recorded
    yet are left out.
    """
    curves: dict[str, list[dict[str, Any]]] = {}
    for p in plan:
        cost = {"epoch": 0.0, "samples": 0.0, "flops": 0.0}
        units = [*p["offset_units"], *([p["unit"]] if p["unit"] else [])]
        complete = True
        for u in units:
            rec = record(u)
            part = None
            if rec is not None:
                part = _unit_cost(rec, p["epoch"] if u == p["unit"] else None)
            if part is None:
                complete = False
                break
            for k in cost:
                cost[k] += part[k]
        if not complete:
            continue
        if p["arm"] == METHOD:
            cost["flops"] += converter_flops
        scores = {}
        for task in p["tasks"]:
            rec = record(f"eval_{p['point']}_{task}")
            scores[task] = score(task, rec.get("metrics")) if rec else None
        curves.setdefault(p["arm"], []).append({"point": p["point"], **cost, "scores": scores})
    for pts in curves.values():
        pts.sort(key=lambda q: q["epoch"])
    return curves


def task_curve(points: Sequence[Mapping[str, Any]], task: str) -> list[dict[str, Any]]:
    """One metric's curve: ``[{"epoch", "flops", "samples", "score"}]``."""
    return [
        {
            "epoch": q["epoch"],
            "flops": q["flops"],
            "samples": q["samples"],
            "score": q["scores"].get(task),
        }  # fmt: skip
        for q in points
    ]


def compare(curves: Mapping[str, Sequence[Mapping[str, Any]]]) -> dict[str, Any]:
    """Speed-ups of VPGTrans over every baseline arm, per task; final and best scores per arm."""
    tasks = sorted({t for pts in curves.values() for q in pts for t in q["scores"]})
    out: dict[str, Any] = {"speedup": {}, "final": {}, "best": {}}
    for arm, pts in curves.items():
        for task in tasks:
            scored = [q for q in task_curve(pts, task) if q["score"] is not None]
            out["final"].setdefault(arm, {})[task] = scored[-1]["score"] if scored else None
            out["best"].setdefault(arm, {})[task] = max((q["score"] for q in scored), default=None)
    for arm in curves:
        if arm == METHOD or METHOD not in curves:
            continue
        out["speedup"][arm] = {
            task: speedup(task_curve(curves[arm], task), task_curve(curves[METHOD], task))
            for task in tasks
        }
    return out


def _stats(values: Sequence[float]) -> dict[str, Any]:
    if not values:
        return {"median": None, "mean": None, "min": None, "max": None, "n": 0}
    finite = all(math.isfinite(v) for v in values)
    return {
        "median": statistics.median(values),
        "mean": statistics.fmean(values) if finite else None,
        "min": min(values),
        "max": max(values),
        "n": len(values),
    }


def seed_value(result: Mapping[str, Any], unit: str) -> float | None:
    """A seed's speed-up for the statistics: ``not_reached`` → 0, ``reached_untrained`` → inf;
    None when there is nothing to compare (``missing``, ``baseline_untrained``)."""
    status = result.get("status")
    if status == "ok":
        return result[unit]
    if status == "not_reached":
        return 0.0
    if status == "reached_untrained":
        return math.inf
    return None


def aggregate(per_seed: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """Statistics over seeds of ``compare`` results (``{seed: compare(...)}``)."""
    out: dict[str, Any] = {"speedup": {}, "final": {}, "best": {}}
    for seed, comp in per_seed.items():
        for arm, by_task in comp["speedup"].items():
            for task, res in by_task.items():
                entry = out["speedup"].setdefault(arm, {}).setdefault(task, {"per_seed": {}})
                entry["per_seed"][seed] = res
        for kind in ("final", "best"):
            for arm, by_task in comp[kind].items():
                for task, v in by_task.items():
                    entry = out[kind].setdefault(arm, {}).setdefault(task, {"per_seed": {}})
                    entry["per_seed"][seed] = v
    for by_task in out["speedup"].values():
        for entry in by_task.values():
            for unit in ("epochs", "flops"):
                vals = [seed_value(r, unit) for r in entry["per_seed"].values()]
                entry[unit] = _stats([v for v in vals if v is not None])
    for kind in ("final", "best"):
        for by_task in out[kind].values():
            for entry in by_task.values():
                entry.update(_stats([v for v in entry["per_seed"].values() if v is not None]))
    return out


def json_safe(value: Any) -> Any:
    """``math.inf`` → the string "inf" (JSON has no infinity), recursively."""
    if isinstance(value, float) and math.isinf(value):
        return "inf" if value > 0 else "-inf"
    if isinstance(value, Mapping):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    return value
