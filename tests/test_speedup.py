"""The paper's speed-up rule on hand-made curves, curve building (stage-1 accounting) and the
statistics over seeds."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vpgtrans_jax.transfer import speedup


def curve(scores, start=1, flops_per_epoch=10.0, offset_flops=0.0):
    """Points at epochs start, start+1, ... with the given scores."""
    return [
        {
            "epoch": float(start + i),
            "flops": offset_flops + (start + i) * flops_per_epoch,
            "score": s,
        }  # fmt: skip
        for i, s in enumerate(scores)
    ]


def test_paper_rule_epochs_and_flops():
    tfs = curve([10, 20, 30, 35, 40, 41, 42, 42.5])  # best 42.5 at epoch 8
    vpg = curve([30, 43, 44], flops_per_epoch=5.0)  # reaches 42.5 at epoch 2
    r = speedup.speedup(tfs, vpg)
    assert r["status"] == "ok"
    assert r["epochs"] == pytest.approx(8 / 2)
    assert r["flops"] == pytest.approx(80.0 / 10.0)
    assert (r["baseline_best"], r["baseline_epoch"], r["method_epoch"]) == (42.5, 8.0, 2.0)


def test_ties():
    # The baseline's best is reached twice: its epochs-to-best is the first time.
    tfs = curve([10, 40, 30, 40])
    # VPGTrans ties the best at epoch 2: a tie counts as beating it.
    vpg = curve([39, 40, 50])
    r = speedup.speedup(tfs, vpg)
    assert r["baseline_epoch"] == 2.0 and r["method_epoch"] == 2.0
    assert r["epochs"] == pytest.approx(1.0)


def test_never_reached():
    r = speedup.speedup(curve([10, 20, 30, 40]), curve([5, 15, 25]))
    assert r["status"] == "not_reached"
    assert r["epochs"] is None and r["flops"] is None
    assert r["upper_bound"] == pytest.approx(4 / 3)  # it would need more than 3 epochs
    assert r["method_best"] == 25


def test_reached_at_epoch_zero():
    """The merged model (epoch 0) already beats the baseline: an unbounded speed-up."""
    vpg = [{"epoch": 0.0, "flops": 1.0, "score": 50.0}, *curve([55, 60])]
    r = speedup.speedup(curve([10, 20, 30]), vpg)
    assert r["status"] == "reached_untrained" and r["epochs"] == math.inf
    assert speedup.seed_value(r, "epochs") == math.inf


def test_baseline_best_at_epoch_zero_and_missing_points():
    tfs = [{"epoch": 0.0, "flops": 0.0, "score": 5.0}, *curve([1, 2])]
    assert speedup.speedup(tfs, curve([10]))["status"] == "baseline_untrained"
    assert speedup.speedup([], curve([10]))["status"] == "missing"
    unscored = curve([None, None])
    assert speedup.speedup(curve([1, 2]), unscored)["status"] == "missing"


def _records(tfs_epochs=4, stage2_epochs=3, batch=10, n=100):
    """Training records as the pipeline writes them: 10 steps per epoch."""
    steps = n // batch

    def unit(num_epochs, flops_per_step):
        return {
            "num_epochs": float(num_epochs),
            "samples": num_epochs * steps * batch,
            "flops": num_epochs * steps * flops_per_step,
            "flops_per_step": flops_per_step,
            "batch_size": batch,
            "dataset_size": n,
            "epoch_exports": {str(k): {"step": k * steps} for k in range(1, int(num_epochs))},
        }

    recs = {
        "stage1": unit(1, 1.0),
        "stage2": unit(stage2_epochs, 3.0),
        "tfs": unit(tfs_epochs, 3.0),
    }
    scores = {"init": 5, "stage1": 30, "stage2_epoch1": 42, "stage2_epoch2": 45, "stage2": 46,
              "tfs_epoch1": 10, "tfs_epoch2": 30, "tfs_epoch3": 41, "tfs": 40}  # fmt: skip
    for point, s in scores.items():
        recs[f"eval_{point}_cap"] = {"metrics": {"CIDEr": s}}
    return recs


def _plan():
    tasks = ["cap"]
    vpg = [("init", None, None, []), ("stage1", "stage1", None, []),
           ("stage2_epoch1", "stage2", 1, ["stage1"]), ("stage2_epoch2", "stage2", 2, ["stage1"]),
           ("stage2", "stage2", None, ["stage1"])]  # fmt: skip
    tfs = [(f"tfs_epoch{k}", "tfs", k, []) for k in (1, 2, 3)] + [("tfs", "tfs", None, [])]
    return [
        {"arm": arm, "point": p, "unit": u, "epoch": e, "offset_units": off, "tasks": tasks}
        for arm, pts in (("vpgtrans", vpg), ("tfs", tfs))
        for p, u, e, off in pts
    ]


def test_curves_count_stage1_as_spent_epochs_and_flops():
    recs = _records()
    curves = speedup.build_curves(
        _plan(), recs.get, lambda task, m: m["CIDEr"], converter_flops=2.0
    )
    vpg = {q["point"]: q for q in curves["vpgtrans"]}
    assert [q["epoch"] for q in curves["vpgtrans"]] == [0.0, 1.0, 2.0, 3.0, 4.0]
    # Stage 1: 10 steps at 1 FLOP; stage 2: 3 FLOPs a step; the converter's 2 FLOPs on top.
    assert vpg["init"]["flops"] == 2.0
    assert vpg["stage1"]["flops"] == 2.0 + 10.0
    assert vpg["stage2_epoch1"]["flops"] == 2.0 + 10.0 + 30.0
    assert vpg["stage2"]["samples"] == 100 + 300
    assert [q["epoch"] for q in curves["tfs"]] == [1.0, 2.0, 3.0, 4.0]
    comp = speedup.compare(curves)
    r = comp["speedup"]["tfs"]["cap"]
    # TFS's best (41) is at epoch 3; VPGTrans first reaches it at 1 + 1 = 2 spent epochs.
    assert (r["baseline_epoch"], r["method_epoch"]) == (3.0, 2.0)
    assert r["epochs"] == pytest.approx(1.5)
    assert r["flops"] == pytest.approx(90.0 / 42.0)
    assert comp["final"]["tfs"]["cap"] == 40 and comp["best"]["tfs"]["cap"] == 41


def test_curves_leave_out_unfinished_training():
    recs = _records()
    del recs["stage1"]  # stage 1 not recorded: every later VPGTrans point is unknown
    curves = speedup.build_curves(_plan(), recs.get, lambda task, m: m["CIDEr"])
    assert [q["point"] for q in curves["vpgtrans"]] == ["init"]


def test_aggregate_over_seeds():
    def comp(res):
        return {"speedup": {"tfs": {"cap": res}}, "final": {"vpgtrans": {"cap": 1.0}},
                "best": {"vpgtrans": {"cap": 2.0}}}  # fmt: skip

    ok = speedup.speedup(curve([1, 2, 3, 4]), curve([5]))  # 4x
    never = speedup.speedup(curve([1, 2, 3, 4]), curve([0, 0]))
    two = speedup.speedup(curve([1, 2, 3, 4]), curve([0, 9]))  # 2x
    agg = speedup.aggregate({"0": comp(ok), "1": comp(never), "2": comp(two)})
    e = agg["speedup"]["tfs"]["cap"]["epochs"]
    assert e["median"] == pytest.approx(2.0)  # never reached counts as 0
    assert (e["min"], e["max"], e["n"]) == (0.0, 4.0, 3)
    assert e["mean"] == pytest.approx(2.0)
    inf = speedup.speedup(curve([1, 2]), [{"epoch": 0.0, "flops": 0.0, "score": 9}])
    agg = speedup.aggregate({"0": comp(ok), "1": comp(inf)})
    assert agg["speedup"]["tfs"]["cap"]["epochs"]["mean"] is None  # undefined with infinity
    assert speedup.json_safe(agg)["speedup"]["tfs"]["cap"]["epochs"]["max"] == "inf"


# ---- properties of the rule ---------------------------------------------------------------------

scores = st.lists(st.floats(0, 100, allow_nan=False), min_size=1, max_size=12)


@settings(max_examples=200, deadline=None)
@given(scores)
def test_a_curve_against_itself_is_one(s):
    r = speedup.speedup(curve(s), curve(s))
    assert r["status"] == "ok" and r["epochs"] == pytest.approx(1.0)


@settings(max_examples=200, deadline=None)
@given(scores, st.integers(1, 6))
def test_k_times_faster_is_a_speedup_of_k(s, k):
    """The same scores reached k times earlier (each method epoch = k baseline epochs)."""
    base = [{"epoch": float(k * (i + 1)), "flops": float(k * (i + 1)), "score": v}
            for i, v in enumerate(s)]  # fmt: skip
    r = speedup.speedup(base, curve(s, flops_per_epoch=1.0))
    assert r["epochs"] == pytest.approx(k) and r["flops"] == pytest.approx(k)


@settings(max_examples=200, deadline=None)
@given(scores, scores)
def test_the_reported_points_follow_the_rule(b, m):
    r = speedup.speedup(curve(b), curve(m))
    best = max(b)
    assert r["baseline_best"] == best
    assert r["baseline_epoch"] == 1 + b.index(best)  # the first time it is reached
    if r["status"] == "ok":
        i = int(r["method_epoch"]) - 1
        assert m[i] >= best and all(v < best for v in m[:i])
        assert r["epochs"] == pytest.approx(r["baseline_epoch"] / r["method_epoch"])
    else:
        assert r["status"] == "not_reached" and max(m) < best


@settings(max_examples=200, deadline=None)
@given(scores, scores, st.lists(st.floats(0, 50, allow_nan=False), min_size=12, max_size=12))
def test_a_better_method_never_has_a_smaller_speedup(b, m, gains):
    better = [v + g for v, g in zip(m, gains)]
    before = speedup.seed_value(speedup.speedup(curve(b), curve(m)), "epochs")
    after = speedup.seed_value(speedup.speedup(curve(b), curve(better)), "epochs")
    assert after >= before
