"""A transfer over several seeds, with one report: what ``scripts/transfer.py`` runs.

``config.seeds = ()`` (the real-size configs): one ``TransferPipeline`` in ``workdir``, as before.
``config.seeds = (s1, s2, ...)``: the whole transfer with its baselines once per seed, in
``workdir/seed_<s>/`` (each a complete transfer workdir with its own report), with the stage,
baseline and converter seeds set to ``s``; tiny / micro assets are built once in
``workdir/assets/`` and the source model is evaluated with the first seed only. Then::

    workdir/report.json, report.md   the speed-ups per seed, their median / mean / min–max, the
                                     final and best scores per arm, the assets' facts (linear
                                     probe, LLM pretraining, source model), the time spent
    workdir/figures/<task>.png       score vs epochs and vs FLOPs per arm: mean and min–max band

Rerunning the command resumes (every step of every seed is skipped when its output exists).
``config.quick=True`` first applies ``config.quick_override`` (a smaller run, for tests).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Mapping
from typing import Any

import ml_collections

from vpgtrans_jax import paths
from vpgtrans_jax.checkpoint.sources import read_json
from vpgtrans_jax.tiny.micro_assets import MARKER as MICRO_MARKER
from vpgtrans_jax.transfer import figures as figs
from vpgtrans_jax.transfer import speedup
from vpgtrans_jax.transfer.pipeline import TransferPipeline, cpu_time

FORMAT = "vpgtrans_jax.transfer_experiment"
VERSION = 1
TARGET_MEDIAN_SPEEDUP = 2.0  # issue 13: median CIDEr speed-up over seeds (stretch: 4)
TARGET_WALL_S = 20 * 60  # issue 13: the micro experiment, 3 seeds, on 2 CPU cores


def _merge(node: ml_collections.ConfigDict, overrides: Mapping[str, Any], where: str) -> None:
    for key, value in overrides.items():
        if isinstance(value, Mapping) and isinstance(node.get(key), ml_collections.ConfigDict):
            _merge(node[key], value, f"{where}.{key}")
            continue
        if key not in node and node.is_type_safe:  # a schema node; free-form ones take new keys
            raise ValueError(f"config.quick_override: no field {where}.{key} in the config")
        node[key] = tuple(value) if isinstance(value, list) else value


def resolve(cfg: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """An unlocked copy of ``cfg`` with ``quick_override`` applied when ``quick``."""
    c = cfg.copy_and_resolve_references()
    c.unlock()
    if c.quick:
        _merge(c, c.quick_override.to_dict(), "config")
    return c


def seed_config(
    c: ml_collections.ConfigDict, seed: int, assets_dir: str, first: bool
) -> ml_collections.ConfigDict:
    """The single-seed transfer config of ``seed`` (assets shared; source evaluated once)."""
    s = c.copy_and_resolve_references()
    s.unlock()
    s.seeds = ()
    s.converter.seed = int(seed)
    for name in ("stage1", "stage2", "stage3"):
        s.stages[name].override["seed"] = int(seed)
    s.baseline.override["seed"] = int(seed)
    if s.tiny.enabled:
        s.tiny.assets_dir = assets_dir
    if not first:
        points = [p.strip() for p in s.eval.points.split(",")]
        s.eval.points = ",".join(p for p in points if p and p != "source")
    return s


def run_experiment(
    cfg: ml_collections.ConfigDict,
    workdir: str,
    *,
    stop_after: str | None = None,
    progress: bool = True,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Runs (or resumes) the transfer of ``cfg`` for each of its seeds; returns the report."""
    c = resolve(cfg)
    workdir = paths.abspath(workdir)  # a directory or a URL (gs://...)
    t0, c0, load0 = time.time(), cpu_time(), os.getloadavg()
    if not c.seeds:
        report = TransferPipeline(c, workdir, progress=progress, log=log).run(stop_after)
        log(_timing_line(time.time() - t0, cpu_time() - c0))
        return report
    seeds = [int(s) for s in c.seeds]
    assets = paths.join(workdir, "assets")
    pipes = {
        s: TransferPipeline(
            seed_config(c, s, assets, i == 0),
            paths.join(workdir, f"seed_{s}"),
            progress=progress,
            log=log,
        )
        for i, s in enumerate(seeds)
    }  # every seed's config is checked before anything runs
    reports: dict[int, dict[str, Any]] = {}
    stopped = None
    for s, pipe in pipes.items():
        log(f"[experiment] seed {s} ({len(reports) + 1}/{len(seeds)})")
        names = [st.name for st in pipe.steps]
        r = pipe.run(stop_after if stop_after in names else None)
        reports[s] = r
        if r.get("stopped") or not r["complete"]:
            stopped = r.get("stopped") or f"seed {s} stopped after {stop_after}"
            break
    this_run = {"wall_time_s": time.time() - t0, "cpu_time_s": cpu_time() - c0}
    machine = {"cpus": os.cpu_count(), "loadavg_start": list(load0),
               "loadavg_end": list(os.getloadavg())}  # fmt: skip
    report = build(c, workdir, pipes, reports, stopped, this_run, machine)
    write(report, workdir, figures=True)
    log(_timing_line(this_run["wall_time_s"], this_run["cpu_time_s"], report["timing"]))
    return report


def _timing_line(wall: float, cpu: float, timing: Mapping[str, Any] | None = None) -> str:
    line = f"[experiment] this run: {wall / 60:.1f} min wall, {cpu / 60:.1f} min CPU"
    if timing:
        rec = timing["recorded"]
        line += (
            f"; recorded over all runs: {rec['total']['wall_time_s'] / 60:.1f} min wall, "
            f"{rec['total']['cpu_time_s'] / 60:.1f} min CPU ("
            + ", ".join(
                f"{k} {v['wall_time_s'] / 60:.1f}/{v['cpu_time_s'] / 60:.1f}"
                for k, v in rec["phases"].items()
            )
            + " min wall/CPU)"
        )
    return line


def _timing(pipes: Mapping[int, TransferPipeline], assets: dict[str, Any] | None) -> dict:
    """Wall and CPU seconds by phase, summed over every recorded step of every seed."""
    phases: dict[str, dict[str, float]] = {}

    def add(name: str, wall: Any, cpu: Any) -> None:
        p = phases.setdefault(name, {"wall_time_s": 0.0, "cpu_time_s": 0.0})
        p["wall_time_s"] += float(wall or 0.0)
        p["cpu_time_s"] += float(cpu or 0.0)

    for pipe in pipes.values():
        for step in pipe.steps:
            rec = pipe.record(step.name)
            if rec is None or step.kind == "assets":
                continue
            kind = {"converter": "converter+merge", "merge": "converter+merge",
                    "init": "converter+merge"}.get(step.kind, step.kind)  # fmt: skip
            if step.kind == "train":
                kind = "train " + ("baselines" if step.name in pipe.arms else "vpgtrans")
            add(kind, rec.get("wall_time_s"), rec.get("cpu_time_s"))
    for name, t in ((assets or {}).get("phases") or {}).items():
        add(f"assets: {name}", t["wall_time_s"], t["cpu_time_s"])
    total = {
        "wall_time_s": sum(p["wall_time_s"] for p in phases.values()),
        "cpu_time_s": sum(p["cpu_time_s"] for p in phases.values()),
    }
    return {"phases": phases, "total": total}


def _caption_task(tasks: list[str], curves: Mapping[int, Any]) -> str | None:
    for task in tasks:
        for cur in curves.values():
            for pts in cur.values():
                if any(task in q["scores"] for q in pts) and ("caption" in task or "caps" in task):
                    return task
    return None


def build(
    c: ml_collections.ConfigDict,
    workdir: str,
    pipes: Mapping[int, TransferPipeline],
    reports: Mapping[int, Mapping[str, Any]],
    stopped: str | None,
    this_run: dict[str, float],
    machine: dict[str, Any],
) -> dict[str, Any]:
    """The experiment report from the seeds' reports."""
    first = next(iter(pipes.values()))
    assets_path = paths.join(first.assets_dir, MICRO_MARKER) if first.micro else None
    assets = read_json(assets_path) if assets_path and paths.isfile(assets_path) else None
    curves = {s: r["curves"] for s, r in reports.items() if r.get("curves")}
    comps = {str(s): reports[s]["comparison"] for s in curves if reports[s].get("comparison")}
    comparison = speedup.json_safe(speedup.aggregate(comps)) if comps else None
    source_eval = {}
    for row in next(iter(reports.values()))["stages"] if reports else []:
        if row["name"] == "source":
            source_eval = {t: e["headline"] for t, e in row["eval"].items()}
    tasks = sorted({t for cur in curves.values() for pts in cur.values() for q in pts
                    for t in q["scores"]})  # fmt: skip
    cap = _caption_task(tasks, curves)
    complete = len(reports) == len(pipes) and all(r["complete"] for r in reports.values())
    report = {
        "format": FORMAT,
        "version": VERSION,
        "name": c.name,
        "workdir": workdir,
        "complete": complete,
        "stopped": stopped,
        "quick": bool(c.quick),
        "seeds": [int(s) for s in c.seeds],
        "seed_reports": {str(s): paths.join(p.workdir, "report.md") for s, p in pipes.items()},
        "assets": _assets_summary(assets),
        "source_eval": source_eval,
        "converter": {
            str(s): (r.get("converter") or {}).get("heldout_cosine") for s, r in reports.items()
        },  # fmt: skip
        "comparison": comparison,
        "curves": {str(s): v for s, v in curves.items()},
        "caption_task": cap,
        "timing": {"this_run": this_run, "recorded": _timing(pipes, assets), "machine": machine},
        "figures": {},
    }
    report["targets"] = _targets(report)
    report["observations"] = observations(report)
    return report


def _assets_summary(assets: Mapping[str, Any] | None) -> dict[str, Any] | None:
    if not assets:
        return None
    probe = assets["vision"].get("probe") or {}
    return {
        "linear_probe": probe.get("heldout_accuracy"),
        "linear_probe_mean": probe.get("mean_heldout_accuracy"),
        "linear_probe_images": probe.get("heldout_images"),
        "llm_final_loss": {k: v.get("final_loss") for k, v in assets["llms"].items()},
        "llm_params": {k: v.get("params") for k, v in assets["llms"].items()},
        "source_training": assets.get("source_training"),
        "world": {k: assets["world"].get(k) for k in ("splits", "tokenizer_vocab", "settings")},
    }


def _targets(r: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    comp, cap = r["comparison"], r["caption_task"]
    tfs = (comp or {}).get("speedup", {}).get("tfs", {}).get(cap) if cap else None
    if tfs:
        med = tfs["epochs"]["median"]
        value = float("inf") if med == "inf" else med
        out["median_caption_speedup"] = {
            "value": med,
            "target": TARGET_MEDIAN_SPEEDUP,
            "met": value is not None and value >= TARGET_MEDIAN_SPEEDUP,
            "stretch_met": value is not None and value >= 2 * TARGET_MEDIAN_SPEEDUP,
        }
        finals = comp["final"].get("vpgtrans", {}).get(cap, {}).get("per_seed", {})
        bests = comp["best"].get("tfs", {}).get(cap, {}).get("per_seed", {})
        per = {s: (finals.get(s) is not None and bests.get(s) is not None
                   and finals[s] >= bests[s]) for s in finals}  # fmt: skip
        out["vpgtrans_final_ge_tfs_best"] = {"per_seed": per, "met": bool(per) and all(
            per.values())}  # fmt: skip
    rec = r["timing"]["recorded"]["total"]
    out["wall_time"] = {
        "recorded_s": rec["wall_time_s"],
        "cpu_s": rec["cpu_time_s"],
        "target_s": TARGET_WALL_S,
        "met": rec["wall_time_s"] <= TARGET_WALL_S,
        "note": "wall time on this machine as it was (see timing.machine: the load average "
        "says how many other processes shared the cores); CPU time is the work done",
    }
    return out


def observations(r: Mapping[str, Any]) -> list[str]:
    """Facts the numbers imply, for the report's notes (computed, not asserted)."""
    notes: list[str] = []
    cap, comp = r["caption_task"], r["comparison"]
    if not cap or not comp:
        return notes
    for seed, cur in r["curves"].items():
        tfs = speedup.task_curve(cur.get("tfs", []), cap)
        scored = [q for q in tfs if q["score"] is not None]
        if scored and max(q["score"] for q in scored) == scored[-1]["score"]:
            notes.append(
                f"seed {seed}: TFS's best {cap} is at its last epoch ({scored[-1]['epoch']:g}): "
                "it had not plateaued, so its epochs-to-best (and the speed-up) would grow with "
                "a longer schedule"
            )
        if scored and scored[-1]["score"] < max(q["score"] for q in scored) - 5.0:
            peak = max(scored, key=lambda q: q["score"])
            notes.append(
                f"seed {seed}: TFS peaked at epoch {peak['epoch']:g} ({peak['score']:.1f}) and "
                f"ended at {scored[-1]['score']:.1f}: an early best shrinks the speed-up"
            )
        vpg = [
            q for q in speedup.task_curve(cur.get("vpgtrans", []), cap) if q["score"] is not None
        ]
        inherit = [q for q in speedup.task_curve(cur.get("inherit", []), cap)
                   if q["score"] is not None]  # fmt: skip
        if vpg and inherit and max(q["score"] for q in inherit) >= max(q["score"] for q in vpg):
            notes.append(
                f"seed {seed}: VPG-inherit reaches VPGTrans's best {cap}: the word converter "
                "and stage 1 add nothing over the inherited VPG here"
            )
    for task in sorted({t for cur in r["curves"].values() for pts in cur.values() for q in pts
                        for t in q["scores"]} - {cap}):  # fmt: skip
        vals = [q["scores"][task] for cur in r["curves"].values() for pts in cur.values()
                for q in pts if q["epoch"] >= 1 and q["scores"].get(task) is not None]  # fmt: skip
        if vals and max(vals) - min(vals) < 3.0:
            notes.append(
                f"{task} hardly moves: every arm scores {min(vals):.1f}–{max(vals):.1f} after any "
                "training, so this metric does not separate the arms and its speed-ups are noise"
            )
    src = (r.get("source_eval") or {}).get(cap)
    init = [q["scores"].get(cap) for cur in r["curves"].values()
            for q in cur.get("vpgtrans", []) if q["point"] == "init"]  # fmt: skip
    init = [v for v in init if v is not None]
    control = [q["scores"].get(cap) for cur in r["curves"].values()
               for q in cur.get("inherit", []) if q["point"] == "inherit_init"]  # fmt: skip
    control = [v for v in control if v is not None]
    if src and init:
        notes.append(
            f"the merged model before any training scores {cap} {sum(init) / len(init):.1f} "
            f"(mean over seeds) against the source model's {src[1]:.1f}: how much of the source "
            "VL ability the word converter carries over on its own"
            + (
                f"; the source VPG with a random projector instead (inherit_init) scores "
                f"{sum(control) / len(control):.1f}"
                if control
                else ""
            )
        )
    cos = [v for v in (r.get("converter") or {}).values() if v is not None]
    if cos:
        notes.append(f"word converter held-out cosine: {', '.join(f'{v:.3f}' for v in cos)}")
    return notes


def write(report: dict[str, Any], workdir: str, figures: bool) -> None:
    """``report.json``, ``report.md`` and (with ``figures``) ``figures/<task>.png``, each
    written whole (renamed into place on disk, one object PUT in a bucket)."""
    if figures and report["curves"]:
        report["figures"] = draw(report, paths.join(workdir, "figures"))
    for name, text in (
        ("report.json", json.dumps(report, indent=1, default=str)),
        ("report.md", render_markdown(report)),
    ):
        paths.write_text(paths.join(workdir, name), text)


def draw(report: Mapping[str, Any], out_dir: str) -> dict[str, str]:
    runs = list(report["curves"].values())
    comp = report["comparison"]
    tasks = sorted({t for cur in runs for pts in cur.values() for q in pts for t in q["scores"]})
    out = {}
    for task in tasks:
        data = figs.series(runs, task)
        if not data:
            continue
        results = {arm: by[task] for arm, by in comp["speedup"].items() if task in by}
        best = (comp["best"].get("tfs") or {}).get(task, {}).get("mean")
        metric = "CIDEr" if "caption" in task or "caps" in task else "accuracy (%)"
        n = len(runs)
        out[task] = figs.plot_task(
            data,
            paths.join(out_dir, f"{task}.png"),
            title=f"{report['name']}: {task} ({metric}), "
            + (f"{n} seeds: mean and min–max" if n > 1 else "1 seed"),
            metric=metric,
            baseline_best=best,
            best_label="TFS best (mean over seeds)" if n > 1 else "TFS best",
            notes=figs.speedup_notes(results, seeds=True),
        )
    return out


def _v(v: Any, spec: str = ".2f", suffix: str = "") -> str:
    if v is None:
        return "–"
    if v == "inf":
        return "∞"
    return format(v, spec) + suffix


def render_markdown(r: Mapping[str, Any]) -> str:
    """``report.md`` of an experiment over seeds."""
    lines = [
        f"# VPGTrans experiment: {r['name']}" + (" (quick)" if r["quick"] else ""),
        "",
        f"- workdir: `{r['workdir']}`; seeds {r['seeds']}"
        + ("" if r["complete"] else f"; **incomplete** ({r['stopped']})"),
        "- per-seed reports: "
        + ", ".join(
            f"[seed {s}]({paths.relpath(p, r['workdir'])})" for s, p in r["seed_reports"].items()
        ),  # fmt: skip
    ]
    a = r.get("assets")
    if a:
        probe = ", ".join(f"{k} {v * 100:.1f}%" for k, v in (a["linear_probe"] or {}).items())
        lines += [
            f"- frozen ViT, linear probe on {a['linear_probe_images']} held-out images: {probe} "
            f"(mean {_v((a['linear_probe_mean'] or 0) * 100, '.1f')}%)",
            "- LLM pretraining (packed text), final LM loss: "
            + ", ".join(
                f"{k} {_v(v, '.3f')} ({a['llm_params'][k]:,} params)"
                for k, v in a["llm_final_loss"].items()
            ),  # fmt: skip
        ]
        st = a.get("source_training") or {}
        curve = " → ".join(f"{loss:.3f}" for _, loss in st.get("loss_by_epoch") or [])
        lines.append(
            f"- source VL model: {st.get('epochs')} epochs, training loss by epoch {curve}"
        )
    if r["source_eval"]:
        lines.append(
            "- source VL model scores: "
            + ", ".join(f"{t} {h[0]} {h[1]:.2f}" for t, h in r["source_eval"].items() if h)
        )
    comp = r["comparison"]
    if comp:
        lines += [
            "",
            "## Does the transfer pay off?",
            "",
            "Speed-up (paper, Table 3) = epochs the baseline needs to reach its best score / "
            "epochs VPGTrans needs to reach it (stage 1 counted as spent epochs); FLOPs: the same "
            "in training FLOPs. Per seed, then the median, mean and min–max over seeds "
            "(never reached = 0).",
            "",
            "| baseline | metric | per seed (epochs) | median | mean | min–max | median (FLOPs) |",
            "|---|---|---|---|---|---|---|",
        ]
        for arm, by_task in comp["speedup"].items():
            for task, e in by_task.items():
                per = ", ".join(
                    _v(v["epochs"], ".2f", "x") if v["status"] in ("ok", "reached_untrained")
                    else v["status"]
                    for v in e["per_seed"].values()
                )  # fmt: skip
                ep, fl = e["epochs"], e["flops"]
                lines.append(
                    f"| {arm} | {task} | {per} | {_v(ep['median'], '.2f', 'x')} | "
                    f"{_v(ep['mean'], '.2f', 'x')} | {_v(ep['min'], '.2f')}–{_v(ep['max'], '.2f')} "
                    f"| {_v(fl['median'], '.2f', 'x')} |"
                )
        lines += ["", "| arm | metric | final: mean (min–max) | best: mean (min–max) |",
                  "|---|---|---|---|"]  # fmt: skip
        for arm, by_task in comp["final"].items():
            for task, f in by_task.items():
                b = comp["best"][arm][task]
                lines.append(
                    f"| {arm} | {task} | {_v(f['mean'])} ({_v(f['min'])}–{_v(f['max'])}) | "
                    f"{_v(b['mean'])} ({_v(b['min'])}–{_v(b['max'])}) |"
                )
        for task, path in r["figures"].items():
            lines += ["", f"![{task}]({paths.relpath(path, r['workdir'])})"]
    t = r.get("targets") or {}
    if t:
        lines += ["", "## Targets (issue 13; measured, not asserted)", ""]
        if "median_caption_speedup" in t:
            m = t["median_caption_speedup"]
            lines.append(
                f"- median {r['caption_task']} speed-up over TFS >= {m['target']:g}x: "
                f"{_v(m['value'], '.2f', 'x')} → {'met' if m['met'] else 'missed'} "
                f"(stretch 4x: {'met' if m['stretch_met'] else 'missed'})"
            )
        if "vpgtrans_final_ge_tfs_best" in t:
            v = t["vpgtrans_final_ge_tfs_best"]
            lines.append(f"- VPGTrans final >= TFS best, per seed: {v['per_seed']} → "
                         f"{'met' if v['met'] else 'missed'}")  # fmt: skip
        w = t["wall_time"]
        lines.append(
            f"- whole experiment (recorded steps, all runs): {w['recorded_s'] / 60:.1f} min wall, "
            f"{w['cpu_s'] / 60:.1f} min CPU; target <= {w['target_s'] / 60:.0f} min wall on 2 "
            f"cores → {'met' if w['met'] else 'missed'} on this machine"
        )
    tm = r["timing"]
    mach = tm["machine"]
    lines += [
        "",
        "## Time",
        "",
        f"This run: {tm['this_run']['wall_time_s'] / 60:.1f} min wall, "
        f"{tm['this_run']['cpu_time_s'] / 60:.1f} min CPU. Machine: {mach['cpus']} CPUs, load "
        f"average {mach['loadavg_start'][0]:.1f} at the start, {mach['loadavg_end'][0]:.1f} at "
        "the end (a load above the CPU count means other processes shared the cores).",
        "",
        "| phase (all seeds, all runs) | wall (s) | CPU (s) |",
        "|---|---|---|",
    ]
    for name, p in tm["recorded"]["phases"].items():
        lines.append(f"| {name} | {p['wall_time_s']:.1f} | {p['cpu_time_s']:.1f} |")
    tot = tm["recorded"]["total"]
    lines.append(f"| **total** | {tot['wall_time_s']:.1f} | {tot['cpu_time_s']:.1f} |")
    if r["observations"]:
        lines += ["", "## Observations (computed from the numbers above)", ""]
        lines += [f"- {n}" for n in r["observations"]]
    conv = {s: v for s, v in r["converter"].items() if v is not None}
    if conv:
        lines += ["", f"Word converter held-out cosine per seed: {conv}."]
    lines += ["", "The speed-up rule and what limits it on the micro world: docs/transfer.md §4."]
    return "\n".join(lines) + "\n"
