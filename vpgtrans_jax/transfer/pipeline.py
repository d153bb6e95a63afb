"""The whole VPGTrans transfer from one config: converter → merge → stage 1 → 2 (→ 3) + evals.

Workdir layout (each step is skipped when its output exists, so a rerun resumes)::

    assets/                 tiny configs only: the offline source VL model and the two LLMs
    converter/              word converter (converter.json marks it complete)
    init/                   the merge (source VPG + merged projector): the stage-1 starting model
                            directory; stores the VPG parts, references the source ViT and the
                            target LLM
    stage{1,2,3}/           training workdirs (checkpoints, metrics, export/ = the stage's model;
                            exports/epoch_<k>/ = its model after epoch k with eval.every_epoch)
    tfs_init/, inherit_init/  config.baselines: the baselines' starting models (baselines.py)
    tfs/, inherit/          config.baselines: their training workdirs, like stage2/
    eval/<point>/<task>/    predictions_<task>.json, metrics_<task>.json, eval_config.json
                            (<point>: source, init, stage2, stage2_epoch3, tfs_epoch1, ...)
    records/<step>.json     what each finished step measured (wall time, steps, FLOPs, metrics)
    report.json, report.md  rewritten after every step
    figures/                config.baselines: score vs epochs / FLOPs per arm (at the end)

The workdir (and the input directories of a real-size config) may be ``gs://`` URLs: every path
goes through ``vpgtrans_jax.paths``; records and reports are written whole (one object PUT), and
a directory output counts as done only once its upload finished (``TransferPipeline.done``).
Tiny assets may live in the bucket too; the micro assets need a local ``tiny.assets_dir``.

Training resumes from its own checkpoints inside ``stageN/`` (``train.loop.train``); a SIGTERM
stops the stage at a step boundary, the report is written, and the next run continues.
"""

from __future__ import annotations

import dataclasses
import json
import math
import resource
import time
from collections.abc import Callable
from typing import Any

import ml_collections

from vpgtrans_jax import paths, tiny
from vpgtrans_jax.checkpoint.hf import blip2, llms
from vpgtrans_jax.checkpoint.model_dir import read_config
from vpgtrans_jax.checkpoint.sources import read_json
from vpgtrans_jax.eval.runner import evaluate
from vpgtrans_jax.tiny.micro_assets import MARKER as MICRO_MARKER
from vpgtrans_jax.tiny.micro_assets import asset_paths, ensure_micro_assets, verify_assets
from vpgtrans_jax.tiny.transfer_assets import ensure_tiny_assets
from vpgtrans_jax.train.config_base import REQUIRED, validate
from vpgtrans_jax.train.flops import train_step_flops
from vpgtrans_jax.train.loop import epoch_export_dir, train
from vpgtrans_jax.transfer import config_io
from vpgtrans_jax.transfer.baselines import ARMS, write_arm_init
from vpgtrans_jax.transfer.linear_map import FitConfig
from vpgtrans_jax.transfer.merge import merge_projector
from vpgtrans_jax.transfer.report import eval_metrics, write_report
from vpgtrans_jax.transfer.word_converter import build_word_converter

STAGES = ("stage1", "stage2", "stage3")
EVAL_POINTS = ("source", "init", *STAGES, *ARMS, *(f"{a}_init" for a in ARMS))


class TransferStopped(RuntimeError):
    """A training stage stopped early (SIGTERM / Ctrl-C); rerun the same command to resume."""


@dataclasses.dataclass
class Step:
    """One resumable unit: ``run()`` produces ``output`` and returns the facts to record."""

    name: str
    kind: str  # assets | converter | merge | init | train | eval
    output: str
    run: Callable[[], dict[str, Any]]
    stage: str | None = None  # the report row it belongs to
    task: str | None = None


def _llm_type(llm_dir: str) -> str | None:
    """The family name of a HF LLM (or BLIP-2) directory's LLM; None when unreadable."""
    path = paths.join(llm_dir, "config.json")
    if not paths.isfile(path):
        return None
    cfg = read_json(path)
    if blip2.is_blip2(cfg):
        cfg = cfg.get("text_config") or {}
    return (
        llms.family_of_model_type(cfg.get("model_type", "opt")) if isinstance(cfg, dict) else None
    )


class TransferPipeline:
    """Plans the steps of a transfer config (checking it up front) and runs them in order."""

    def __init__(
        self,
        cfg: ml_collections.ConfigDict,
        workdir: str,
        *,
        progress: bool = True,
        log: Callable[[str], None] = print,
    ):
        self.cfg, self.progress, self.log = cfg, progress, log
        self.workdir = paths.abspath(workdir)  # a directory or a URL (gs://...)
        self.records_dir = paths.join(self.workdir, "records")
        self._resolve_inputs()
        self.stage_configs = self._stage_configs()
        self.eval_configs = self._eval_configs()
        self.steps = self._plan()

    # ---- inputs and configs -------------------------------------------------------------------

    def _resolve_inputs(self) -> None:
        c = self.cfg
        self.tiny = bool(c.tiny.enabled)
        self.micro = self.tiny and bool(c.tiny.micro.enabled)
        self.places = {"workdir": self.workdir}
        if self.tiny:
            self.tiny_source = config_io.load_config_file(c.tiny.source_stage, what="tiny")
            config_io.apply_overrides(self.tiny_source, c.tiny.source_override, what="tiny")
            assets = c.tiny.assets_dir or paths.join(self.workdir, "assets")
            self.assets_dir = paths.abspath(assets)
            if self.micro and paths.is_remote(self.assets_dir):
                raise ValueError(
                    f"config.tiny.assets_dir: the micro assets ({self.assets_dir}) are built and "
                    "read on local disk; set --config.tiny.assets_dir=/a/local/directory"
                )
            if self.micro:  # the micro world and models live with the other assets
                synthetic = asset_paths(self.assets_dir)["synthetic_dir"]
                verify_assets(self.assets_dir, c.tiny.micro, self.tiny_source)
            else:
                synthetic = paths.abspath(self.tiny_source.data.synthetic_dir)
            self.places.update(synthetic_dir=synthetic, assets_dir=self.assets_dir)
            self.source_checkpoint = paths.join(self.assets_dir, "source_vl", "export")
            self.source_llm = paths.join(self.assets_dir, "src_llm")
            self.target_llm = paths.join(self.assets_dir, "tgt_llm")
        else:
            missing = [
                f"config.{k}"
                for k, v in (
                    ("source.checkpoint", c.source.checkpoint),
                    ("target.llm", c.target.llm),
                )
                if v in ("", REQUIRED)
            ]
            if missing:
                raise ValueError(
                    f"{', '.join(missing)}: required (a directory on disk or a gs:// URL)"
                )
            self.source_checkpoint = paths.abspath(c.source.checkpoint)
            self.source_llm = paths.abspath(c.source.llm or c.source.checkpoint)
            self.target_llm = paths.abspath(c.target.llm)
            for key, path in (
                ("source.checkpoint", self.source_checkpoint),
                ("source.llm", self.source_llm),
                ("target.llm", self.target_llm),
            ):
                if not paths.isdir(path):
                    raise ValueError(f"config.{key}: {path!r} is not a directory")
        texts = [self._sub(t) for t in c.converter.text]
        bad = [t for t in texts if t == REQUIRED or not t]
        if not texts or bad:
            raise ValueError("config.converter.text: caption files are required")
        self.converter_text = texts
        self.arms = [a.strip() for a in c.baselines.split(",") if a.strip()]
        unknown = [a for a in self.arms if a not in ARMS]
        if unknown or len(set(self.arms)) != len(self.arms):
            raise ValueError(f"config.baselines={c.baselines!r}: expected distinct names of {ARMS}")
        self.dirs = {
            "converter": paths.join(self.workdir, "converter"),
            "init": paths.join(self.workdir, "init"),
            **{s: paths.join(self.workdir, s) for s in STAGES},
            **{a: paths.join(self.workdir, a) for a in self.arms},
            **{f"{a}_init": paths.join(self.workdir, f"{a}_init") for a in self.arms},
        }

    def _sub(self, value: Any) -> Any:
        return config_io.substitute(config_io.to_plain(value), self.places)

    def enabled_stages(self) -> list[str]:
        return [s for s in STAGES if self.cfg.stages[s].config]

    def _stage_configs(self) -> dict[str, ml_collections.ConfigDict]:
        """Every enabled stage's training config, chained and validated before anything runs."""
        out: dict[str, ml_collections.ConfigDict] = {}
        stages = self.enabled_stages()
        if stages[:2] != ["stage1", "stage2"]:
            raise ValueError(
                "config.stages: stage1 and stage2 need a config file (stage3 optional)"
            )
        if self.micro:
            tgt_type = self.cfg.tiny.micro.tgt_llm.type
        elif self.tiny:
            tgt_type = self.cfg.tiny.target_llm_type
        else:
            tgt_type = _llm_type(self.target_llm)
        # (name, config file, overrides, model.path, model.vpg_init): the VPGTrans stages chained,
        # then each baseline from its own start with stage 2's recipe (or config.baseline's).
        units, prev = [], ""
        for name in stages:
            spec = self.cfg.stages[name]
            vpg_init = paths.join(prev, "export") if prev else ""
            units.append((name, spec.config, [spec.override], self.dirs["init"], vpg_init))
            prev = self.dirs[name]
        base = self.cfg.baseline
        for arm in self.arms:
            file = base.config or self.cfg.stages.stage2.config
            overrides = [base.override] if base.config else [self.cfg.stages.stage2.override,
                                                             base.override]  # fmt: skip
            units.append((arm, file, overrides, self.dirs[f"{arm}_init"], ""))
        for name, file, overrides, path, vpg_init in units:
            what = f"config.{'stages.' + name if name in STAGES else 'baseline'} ({file})"
            sc = config_io.load_config_file(file, what=what)
            for override in overrides:
                config_io.apply_overrides(sc, self._sub(override), what=what)
            sc.model.init = "pretrained"
            sc.model.path = path
            sc.model.vpg_init = vpg_init
            if tgt_type is not None:
                sc.model.llm_type = tgt_type
            if sc.data.tokenizer in ("", REQUIRED):
                sc.data.tokenizer = self.target_llm
            if self.cfg.eval.every_epoch and name != "stage3":
                if sc.num_steps > 0:
                    raise ValueError(
                        f"{what}: config.eval.every_epoch needs a schedule in epochs; set "
                        f"num_steps=0 and num_epochs (it has num_steps={sc.num_steps})"
                    )
                sc.export_every_epochs = 1
            try:
                tiny.prepare(sc)  # tiny stage configs: their synthetic data (cached)
                validate(sc)
            except ValueError as e:
                raise ValueError(f"{what}: {e}") from None
            out[name] = sc
        return out

    def epochs(self, name: str) -> list[int]:
        """The intermediate epochs (1, 2, ... before the last) whose exports are evaluated."""
        sc = self.stage_configs[name]
        if sc.export_every_epochs <= 0:
            return []
        return [k for k in range(1, math.ceil(sc.num_epochs)) if k % sc.export_every_epochs == 0]

    def _eval_configs(self) -> dict[tuple[str, str], dict[str, Any]]:
        """``{(point, task): plain eval config}``; required data paths are checked here."""
        c = self.cfg.eval
        tasks = [t.strip() for t in c.run.split(",") if t.strip()]
        points = [p.strip() for p in c.points.split(",") if p.strip()]
        unknown = [p for p in points if p not in EVAL_POINTS]
        if unknown:
            raise ValueError(f"config.eval.points: unknown {unknown}; expected {EVAL_POINTS}")
        trained = [*self.enabled_stages(), *self.arms]
        points = [
            p for p in points if p in ("source", "init") or p.removesuffix("_init") in trained
        ]
        points += [a for a in self.arms if a not in points]  # a baseline is there to be compared
        self.point_info: dict[str, dict[str, Any]] = {}
        expanded = []
        for p in points:
            unit = p if p in STAGES or p in ARMS else None
            for k in self.epochs(unit) if unit else []:
                expanded.append(f"{unit}_epoch{k}")
                self.point_info[expanded[-1]] = {"unit": unit, "epoch": k}
            expanded.append(p)
            self.point_info[p] = {"unit": unit, "epoch": None}
        points = expanded
        out: dict[tuple[str, str], dict[str, Any]] = {}
        for task in tasks:
            if task not in c.tasks:
                raise ValueError(f"config.eval.run: task {task!r} is not in config.eval.tasks")
            spec = c.tasks[task]
            what = f"config.eval.tasks.{task} ({spec.config})"
            ec = config_io.load_config_file(spec.config, what=what)
            config_io.apply_overrides(ec, self._sub(spec.override), what=what)
            plain = config_io.to_plain(ec)
            required = config_io.find_required(plain, REQUIRED)
            if required:
                raise ValueError(
                    f"{what}: required fields {required} are not set; pass "
                    + " ".join(f"--config.eval.tasks.{task}.override.{k}=..." for k in required)
                )
            for point in points:
                checkpoint, tokenizer = self._eval_model(point)
                out[(point, task)] = {
                    **plain,
                    "checkpoint": checkpoint,
                    "tokenizer": plain.get("tokenizer") or tokenizer,
                }
        return out

    def _eval_model(self, point: str) -> tuple[str, str]:
        if point == "source":
            return self.source_checkpoint, self.source_llm
        if point in self.dirs and point.endswith("init"):
            return self.dirs[point], self.target_llm
        info = self.point_info[point]
        if info["epoch"] is not None:
            return epoch_export_dir(self.dirs[info["unit"]], info["epoch"]), self.target_llm
        return paths.join(self.dirs[point], "export"), self.target_llm

    # ---- the plan -------------------------------------------------------------------------------

    def _plan(self) -> list[Step]:
        steps: list[Step] = []
        if self.micro:
            marker = paths.join(self.assets_dir, MICRO_MARKER)
            steps.append(Step("assets", "assets", marker, self._run_assets))
        elif self.tiny:
            steps.append(Step("assets", "assets", self.source_checkpoint, self._run_assets))
        steps += [
            Step(
                "converter",
                "converter",
                paths.join(self.dirs["converter"], "converter.json"),
                self._run_converter,
            ),
            Step(
                "merge",
                "merge",
                paths.join(self.dirs["init"], "vpgtrans_model.json"),
                self._run_merge,
                stage="init",
            ),
        ]
        units = ["source", "init", *self.enabled_stages()]
        for arm in self.arms:
            units += [f"{arm}_init", arm]
        for unit in units:
            if unit.endswith("_init") and unit != "init":
                out = paths.join(self.dirs[unit], "vpgtrans_model.json")
                steps.append(Step(unit, "init", out, lambda u=unit: self._run_arm_init(u),
                                  stage=unit))  # fmt: skip
            if unit in STAGES or unit in ARMS:
                out = paths.join(self.dirs[unit], "export", "vpgtrans_model.json")
                steps.append(
                    Step(unit, "train", out, lambda p=unit: self._run_stage(p), stage=unit)
                )
            for p, task in self.eval_configs:
                if p == unit or self.point_info.get(p, {}).get("unit") == unit and p != unit:
                    name = f"eval_{p}_{task}"
                    steps.append(
                        Step(
                            name,
                            "eval",
                            paths.join(self.records_dir, name + ".json"),
                            lambda p=p, t=task: self._run_eval(p, t),
                            stage=p,
                            task=task,
                        )
                    )
        return steps

    # ---- running --------------------------------------------------------------------------------

    def run(self, stop_after: str | None = None) -> dict[str, Any]:
        """Runs every step whose output is missing; returns the report (also written to disk)."""
        names = [s.name for s in self.steps]
        if stop_after and stop_after not in names:
            raise ValueError(f"stop_after={stop_after!r}: not a step of this transfer ({names})")
        paths.makedirs(self.records_dir)
        this_run: dict[str, str] = {}
        try:
            for step in self.steps:
                if self.done(step):
                    this_run[step.name] = "skipped"
                    self.log(f"[transfer] {step.name}: output exists ({step.output}), skipped")
                else:
                    self.log(f"[transfer] {step.name}: running")
                    t0, c0 = time.time(), cpu_time()
                    facts = step.run()
                    facts.setdefault("wall_time_s", time.time() - t0)
                    facts.setdefault("cpu_time_s", cpu_time() - c0)
                    self._write_record(step, facts)
                    this_run[step.name] = "ran"
                self.report(this_run)
                if step.name == stop_after:
                    self.log(f"[transfer] stopping after {stop_after} as asked")
                    break
        except TransferStopped as e:
            this_run[step.name] = "stopped"
            self.log(f"[transfer] {e}")
            return self.report(this_run, stopped=str(e), final=True)
        return self.report(this_run, final=True)

    def done(self, step: Step) -> bool:
        """Whether ``step``'s output exists. In a bucket a directory output is uploaded file by
        file under an in-progress marker (``paths.staged_output``): it counts once the marker
        is gone, so a crash mid-upload reruns the step instead of skipping it."""
        if not paths.exists(step.output):
            return False
        if not paths.is_remote(step.output) or step.kind == "eval":  # records: one object
            return True
        # The tiny assets' output is the source model's directory; the others are files in one.
        folder = step.output if step.kind == "assets" else paths.dirname(step.output)
        return not paths.exists(paths.join(folder, paths.IN_PROGRESS))

    def record(self, name: str) -> dict[str, Any] | None:
        path = paths.join(self.records_dir, name + ".json")
        return read_json(path) if paths.isfile(path) else None

    def _write_record(self, step: Step, facts: dict[str, Any]) -> None:
        rec = {
            "name": step.name,
            "kind": step.kind,
            "output": step.output,
            **facts,
            "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S"),
        }
        # Whole: a temporary file renamed on disk, one object PUT in a bucket.
        path = paths.join(self.records_dir, step.name + ".json")
        paths.write_text(path, json.dumps(rec, indent=1, default=str))

    def report(
        self, this_run: dict[str, str], stopped: str | None = None, final: bool = False
    ) -> dict[str, Any]:
        """Writes report.json / report.md (and, when ``final``, the figures of the arms)."""
        return write_report(self, this_run, stopped, figures=final)

    def curve_plan(self) -> list[dict[str, Any]]:
        """Every evaluated point of the training arms in order: VPGTrans (init, stage 1's and
        stage 2's epochs, stage 1 counted as spent epochs) and each baseline (its init, its
        epochs). ``{"arm", "point", "unit", "epoch" (within the unit), "offset_units"}`` where
        ``offset_units`` are the training units whose whole cost precedes this point."""
        arms = {"vpgtrans": ["init", "stage1", "stage2"]}
        arms.update({a: [f"{a}_init", a] for a in self.arms})
        tasks = sorted({t for _, t in self.eval_configs})
        plan = []
        for arm, units in arms.items():
            done: list[str] = []
            for unit in units:
                trained = unit in self.stage_configs
                if trained and unit not in self.enabled_stages() + self.arms:
                    continue
                for k in self.epochs(unit) if trained else []:
                    plan.append({"arm": arm, "point": f"{unit}_epoch{k}", "unit": unit,
                                 "epoch": k, "offset_units": list(done)})  # fmt: skip
                plan.append({"arm": arm, "point": unit, "unit": unit if trained else None,
                             "epoch": None, "offset_units": list(done)})  # fmt: skip
                if trained:
                    done.append(unit)
        evaluated = {p for p, _ in self.eval_configs}
        return [dict(p, tasks=tasks) for p in plan if p["point"] in evaluated]

    # ---- the steps ------------------------------------------------------------------------------

    def _run_assets(self) -> dict[str, Any]:
        t = self.cfg.tiny
        if self.micro:
            facts = ensure_micro_assets(
                self.assets_dir, t.micro, self.tiny_source, progress=self.progress, log=self.log
            )
            return {"paths": facts["paths"], "micro": paths.join(self.assets_dir, MICRO_MARKER)}
        found = ensure_tiny_assets(
            self.assets_dir,
            self.tiny_source,
            t.target_llm_arch,
            t.target_llm_type,
            progress=self.progress,
            log=self.log,
        )
        return {"paths": found}

    def _run_converter(self) -> dict[str, Any]:
        cc = self.cfg.converter
        fit = FitConfig(
            loss=cc.loss,
            lr=cc.lr,
            momentum=cc.momentum,
            batch_size=cc.batch_size,
            epochs=cc.epochs,
            heldout_fraction=cc.heldout_fraction,
            seed=cc.seed,
        )
        conv = build_word_converter(
            self.source_llm,
            self.target_llm,
            self.converter_text,
            self.dirs["converter"],
            align=cc.align,
            fit=fit,
            process_captions=not cc.raw_text,
            overwrite=True,  # a half-finished earlier attempt of this very step
            log=self.log,
        )
        m = conv.meta["metrics"]
        # SGD on a linear map: forward + two backward matmuls per pair.
        flops = 6.0 * m["steps"] * cc.batch_size * conv.src_dim * conv.tgt_dim
        return {"metrics": m, "align_stats": conv.meta["align_stats"], "flops": flops}

    def _run_merge(self) -> dict[str, Any]:
        """The stage-1 model: merged VPG parts stored; source ViT and target LLM referenced."""
        manifest = merge_projector(
            self.source_checkpoint,
            self.dirs["converter"],
            self.dirs["init"],
            target_llm=self.target_llm,
            qformer_scan_layers=False,
            overwrite=True,  # a half-finished earlier attempt of this very step
            log=self.log,
        )
        return {
            "projector_shape": manifest["info"]["projector_shape"],
            "vl_config": manifest["config"],
        }

    def _run_stage(self, name: str) -> dict[str, Any]:
        sc = self.stage_configs[name]
        summary = train(sc, self.dirs[name], progress=self.progress)
        attempts_path = paths.join(self.records_dir, f"{name}.attempts.json")
        attempts = read_json(attempts_path) if paths.isfile(attempts_path) else []
        attempts.append(
            {
                k: summary.get(k)
                for k in ("steps", "wall_time_s", "flops_per_step", "stopped_by", "final_loss")
            }
        )
        paths.write_text(attempts_path, json.dumps(attempts, indent=1))
        if summary.get("export") is None:
            raise TransferStopped(
                f"{name} stopped at step {summary['steps']}/{summary['total_steps']} "
                f"({summary.get('stopped_by') or 'no export written'}); rerun to resume"
            )
        analytic = train_step_flops(
            read_config(sc.model.path), tuple(sc.trainable), sc.batch_size, sc.data.max_len
        )["total"]
        xla = next((a["flops_per_step"] for a in reversed(attempts) if a["flops_per_step"]), None)
        steps = int(summary["steps"])
        return {
            "config": self.cfg.stages[name].config if name in STAGES else None,
            "stage": sc.stage,
            "trainable": list(sc.trainable),
            "batch_size": sc.batch_size,
            "lr": sc.optim.init_lr,
            "steps": steps,
            "samples": int(summary["samples"]),
            "final_loss": summary.get("final_loss"),
            "wall_time_s": sum(a["wall_time_s"] or 0.0 for a in attempts),
            "attempts": len(attempts),
            "flops_per_step": analytic,
            "flops_per_step_xla": xla,
            "flops": steps * analytic,
            "flops_xla": None if xla is None else steps * xla,
            "params": summary.get("params"),
            "seed": sc.seed,
            "num_epochs": sc.num_epochs,
            "dataset_size": summary.get("dataset_size"),
            "epoch_exports": summary.get("epoch_exports"),
        }

    def _run_arm_init(self, unit: str) -> dict[str, Any]:
        arm = unit.removesuffix("_init")
        seed = int(self.stage_configs[arm].seed)
        manifest = write_arm_init(
            arm,
            self.source_checkpoint,
            self.target_llm,
            self.dirs[f"{arm}_init"],
            seed=seed,
            log=self.log,
        )
        stored = {p: e.get("origin") for p, e in manifest["parts"].items() if e.get("stored")}
        return {"arm": arm, "seed": seed, "origins": stored}

    def _run_eval(self, point: str, task: str) -> dict[str, Any]:
        ec = self.eval_configs[(point, task)]
        out = paths.join(self.workdir, "eval", point, task)
        paths.makedirs(out)
        # The resolved config, for the record.
        paths.write_text(paths.join(out, "eval_config.json"), json.dumps(ec, indent=1))
        raw = evaluate(ml_collections.ConfigDict(ec), out)
        return {
            "task": task,
            "checkpoint": ec["checkpoint"],
            "predictions": paths.join(out, f"predictions_{task}.json"),
            "metrics": eval_metrics(raw),
            "num_samples": None if raw is None else _num_samples(raw),
        }


def cpu_time() -> float:
    """CPU seconds of this process (all threads) and of its finished children (Java scorers)."""
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return time.process_time() + kids.ru_utime + kids.ru_stime


def _num_samples(metrics: dict[str, Any]) -> int | None:
    for key in ("num_images", "num_questions", "num_samples"):
        if isinstance(metrics.get(key), int):
            return metrics[key]
    return None


def run_transfer(
    cfg: ml_collections.ConfigDict,
    workdir: str,
    *,
    stop_after: str | None = None,
    progress: bool = True,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Plans and runs (or resumes) the transfer ``cfg`` describes in ``workdir``; the report."""
    return TransferPipeline(cfg, workdir, progress=progress, log=log).run(stop_after=stop_after)
