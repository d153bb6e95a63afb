"""Training: tiny configs end to end, resume exactness, SIGTERM, NaN guard, config errors,
sharded equivalence, optimiser semantics."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from ml_collections import config_flags  # noqa: F401 - config files are plain modules here

from tests.tiny_run import TINY_RUN, train_until, with_overrides
from tests.tiny_run import load_config as _load_config
from vpgtrans_jax import tiny
from vpgtrans_jax.nn import layers
from vpgtrans_jax.train import config_base, loop, optim
from vpgtrans_jax.train import step as step_lib
from vpgtrans_jax.train.metrics_writer import crc32c, read_scalars

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def synthetic_dir(tmp_path_factory):
    return str(tmp_path_factory.mktemp("synthetic") / "data")


def _tiny(name, synthetic_dir, **over):
    c = _load_config(name)
    c.data.synthetic_dir = synthetic_dir
    with_overrides(c, {**TINY_RUN, "checkpoint_every": 3, **over})
    # These runs are shorter than the configs' warm-up, which validation refuses.
    c.optim.warmup_steps = min(c.optim.warmup_steps, c.num_steps)
    return tiny.prepare(c)  # the synthetic data and the tiny LLM, as scripts/train.py does


def _losses(workdir):
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        rows = [json.loads(line) for line in f]
    return {r["step"]: r["loss"] for r in rows}


def test_tiny_warmup_learns_and_writes_everything(tmp_path, synthetic_dir):
    c = _tiny("tiny_warmup", synthetic_dir, num_steps=12)
    summary = loop.train(c, str(tmp_path), progress=False)
    losses = _losses(tmp_path)
    assert summary["steps"] == 12 and len(losses) == 12
    assert np.mean([losses[s] for s in (10, 11, 12)]) < np.mean([losses[s] for s in (1, 2, 3)])
    assert max(int(s) for s in os.listdir(tmp_path / "checkpoints")) == 12
    tb = os.listdir(tmp_path / "tensorboard")
    assert len(read_scalars(os.path.join(tmp_path, "tensorboard", tb[0]))) == 12
    assert summary["flops_per_step"] and summary["flops_per_step"] > 0
    # The export is a whole model that vpgtrans_jax.load opens, holding the trained projector.
    import vpgtrans_jax
    from vpgtrans_jax.train import checkpointing

    exported = vpgtrans_jax.load(summary["export"])
    ckpt = checkpointing.Checkpointer(str(tmp_path), every_steps=1)
    restored = ckpt.restore(None, with_data=False)
    ckpt.close()
    trained = restored[0]["params"]["projector"]["kernel"]
    trained = trained["value"] if isinstance(trained, dict) else trained
    np.testing.assert_array_equal(np.asarray(exported.projector.kernel[...]), np.asarray(trained))


def test_finetune_from_warmup_export_and_resume_is_exact(tmp_path, synthetic_dir):
    warm = _tiny("tiny_warmup", synthetic_dir, num_steps=3)
    loop.train(warm, str(tmp_path / "warm"), progress=False)
    export = str(tmp_path / "warm" / "export")

    full = _tiny("tiny_finetune", synthetic_dir, **{"model.vpg_init": export})
    loop.train(full, str(tmp_path / "full"), progress=False)

    # Interrupted run: stop after 3 of 6 steps (a checkpoint at step 3), then re-run the same
    # command on the same workdir.
    part = _tiny("tiny_finetune", synthetic_dir, **{"model.vpg_init": export})
    stopped = _tiny("tiny_finetune", synthetic_dir, **{"model.vpg_init": export})
    stopped.num_steps = 6
    workdir = str(tmp_path / "resumed")
    _train_until(stopped, workdir, stop_at=3)
    assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["3"]
    loop.train(part, workdir, progress=False)
    a, b = _losses(tmp_path / "full"), _losses(workdir)
    assert sorted(a) == sorted(b) == [1, 2, 3, 4, 5, 6]
    assert [a[s] for s in sorted(a)] == [b[s] for s in sorted(b)]  # bitwise on CPU


def _train_until(c, workdir, stop_at):
    """Runs the loop and delivers SIGTERM to ourselves right after step ``stop_at``."""
    summary = train_until(c, workdir, stop_at)
    assert summary["stopped_by"] == "SIGTERM" and summary["steps"] == stop_at


def test_sigterm_from_outside_saves_and_exits_cleanly(tmp_path, synthetic_dir):
    # Prepare data + tiny LM cache first so the subprocess starts training quickly.
    loop.train(
        _tiny("tiny_warmup", synthetic_dir, num_steps=1), str(tmp_path / "warm"), progress=False
    )
    workdir = tmp_path / "run"
    cmd = [
        sys.executable,
        os.path.join(REPO, "scripts", "train.py"),
        f"--config={os.path.join(REPO, 'configs', 'tiny_warmup.py')}",
        f"--workdir={workdir}",
        "--noprogress",
        f"--config.data.synthetic_dir={synthetic_dir}",
        "--config.data.synthetic_images=64",
        "--config.model.tiny_llm_steps=60",
        "--config.batch_size=8",
        "--config.num_steps=100000",
        "--config.log_every=1",
        "--config.checkpoint_every=100000",
    ]
    env = {
        **os.environ,
        "JAX_PLATFORMS": "cpu",
        "XLA_FLAGS": "--xla_force_host_platform_device_count=1",
    }
    proc = subprocess.Popen(
        cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    metrics = workdir / "metrics.jsonl"
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        if metrics.exists() and len(metrics.read_text().splitlines()) >= 2:
            break
        time.sleep(0.5)
    assert proc.poll() is None, proc.communicate()[0][-3000:]
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0, out[-3000:]
    assert "stopped by SIGTERM" in out
    steps = os.listdir(workdir / "checkpoints")
    assert len(steps) == 1 and 2 <= int(steps[0]) < 100000


def test_nan_guard_skips_and_then_stops(tmp_path, synthetic_dir, monkeypatch):
    from vpgtrans_jax.train import data_setup

    original = data_setup.build_train_iterator

    class Poisoned:
        def __init__(self, it):
            self.it = it

        def __next__(self):
            b = next(self.it)
            b["pixel_values"] = np.full_like(b["pixel_values"], np.nan)
            return b

        def __getattr__(self, name):
            return getattr(self.it, name)

    monkeypatch.setattr(loop, "build_train_iterator", lambda *a, **k: Poisoned(original(*a, **k)))
    c = _tiny("tiny_warmup", synthetic_dir, max_bad_steps=3, num_steps=10)
    with pytest.raises(loop.TrainingError, match="3 consecutive steps"):
        loop.train(c, str(tmp_path), progress=False)


def test_train_step_skips_non_finite_updates():
    class M(nnx.Module):
        def __init__(self, rngs):
            self.projector = layers.Dense(2, 2, axes=(None, None), rngs=rngs)

        def loss(self, pixel_values, input_ids, attention_mask, labels, prompt_lengths=None):
            y = self.projector(pixel_values).sum()
            return y, {"nll_sum": y, "num_tokens": jnp.asarray(1, jnp.int32)}

    graphdef, params, frozen = optim.split_trainable(M(nnx.Rngs(0)), ["projector"])
    tx = optax.sgd(0.1)
    st = step_lib.TrainState.create(params, tx)
    step = jax.jit(step_lib.make_train_step(graphdef, tx))
    batch = {k: jnp.zeros((2, 2)) for k in ("input_ids", "attention_mask", "labels")}
    good, m1 = step(st, frozen, {**batch, "pixel_values": jnp.ones((2, 2))})
    bad, m2 = step(good, frozen, {**batch, "pixel_values": jnp.full((2, 2), jnp.nan)})
    assert bool(m1["finite"]) and not bool(m2["finite"])
    assert int(bad.step) == 1 and int(bad.bad_steps) == 1 and int(bad.skipped_steps) == 1
    same = jax.tree.map(lambda a, b: bool(jnp.array_equal(a, b)), bad.params, good.params)
    assert all(jax.tree.leaves(same))


def test_accumulation_equals_one_big_batch():
    class M(nnx.Module):
        def __init__(self, rngs):
            self.projector = layers.Dense(3, 1, axes=(None, None), rngs=rngs)

        def loss(self, pixel_values, input_ids, attention_mask, labels, prompt_lengths=None):
            err = (self.projector(pixel_values)[:, 0] - labels) ** 2 * attention_mask
            n = attention_mask.sum().astype(jnp.int32)
            return err.sum() / n, {"nll_sum": err.sum(), "num_tokens": n}

    graphdef, params, frozen = optim.split_trainable(M(nnx.Rngs(0)), ["projector"])
    tx = optax.adam(1e-2)
    rng = np.random.default_rng(0)
    batch = {
        "pixel_values": jnp.asarray(rng.standard_normal((8, 3)), jnp.float32),
        "labels": jnp.asarray(rng.standard_normal(8), jnp.float32),
        "attention_mask": jnp.asarray([1, 1, 0, 1, 1, 1, 0, 1], jnp.float32),
        "input_ids": jnp.zeros((8,)),
    }
    outs = []
    for accum in (1, 2, 4):
        st = step_lib.TrainState.create(params, tx)
        st, m = jax.jit(step_lib.make_train_step(graphdef, tx, accum_steps=accum))(
            st, frozen, batch
        )
        outs.append((float(m["loss"]), jax.tree.leaves(st.params)))
    for loss, leaves in outs[1:]:
        assert abs(loss - outs[0][0]) < 1e-6
        for a, b in zip(leaves, outs[0][1]):
            np.testing.assert_allclose(a, b, atol=1e-6)


def test_sharded_training_equals_single_device(tmp_path, synthetic_dir):
    assert jax.device_count() == 8
    results = {}
    for shape in [(1, 1, 1), (2, 2, 2)]:
        c = _tiny("tiny_finetune", synthetic_dir, num_steps=3, mesh_shape=shape, export_final=True)
        workdir = str(tmp_path / "x".join(map(str, shape)))
        loop.train(c, workdir, progress=False)
        from vpgtrans_jax.checkpoint.model_dir import load_params

        parts = load_params(os.path.join(workdir, "export"), parts=c.trainable)
        results[shape] = (_losses(workdir), parts)
    (l1, p1), (l8, p8) = results[(1, 1, 1)], results[(2, 2, 2)]
    for s in l1:
        assert abs(l1[s] - l8[s]) <= 1e-5
    for a, b in zip(jax.tree.leaves(p1), jax.tree.leaves(p8)):
        np.testing.assert_allclose(a, b, atol=1e-5)


def test_config_errors_name_the_field(synthetic_dir):
    c = _load_config("tiny_warmup")
    c.trainable = ("projector", "decoder")
    with pytest.raises(ValueError, match=r"config\.trainable"):
        config_base.validate(c)
    c = _load_config("warmup_llama")
    with pytest.raises(ValueError, match=r"config\.model\.path.*required"):
        config_base.validate(c)
    c.model.path = "/some/dir"
    with pytest.raises(ValueError, match=r"config\.data\.tokenizer"):
        config_base.validate(c)
    c.data.tokenizer = "/some/tokenizer"
    with pytest.raises(ValueError, match=r"config\.data\.sources\.\w+\.args\.\w+.*required"):
        config_base.validate(c)
    c = _load_config("tiny_warmup")
    c.batch_size = 10
    c.accum_steps = 4
    with pytest.raises(ValueError, match=r"config\.batch_size"):
        config_base.validate(c)


def test_schedule_and_lr_multiplier():
    sched = optim.make_schedule(
        "warmup_cosine", init_lr=1e-3, total_steps=10, warmup_steps=2, warmup_lr=1e-5, min_lr=1e-4
    )
    assert abs(float(sched(0)) - 1e-5) < 1e-9
    assert abs(float(sched(2)) - 1e-3) < 1e-9
    assert abs(float(sched(10)) - 1e-4) < 1e-9
    assert float(sched(5)) > float(sched(7)) > float(sched(9))

    class M(nnx.Module):
        def __init__(self, rngs):
            self.projector = layers.Dense(2, 2, axes=(None, None), rngs=rngs)
            self.qformer = layers.Dense(2, 2, axes=(None, None), rngs=rngs)

    _, params, _ = optim.split_trainable(M(nnx.Rngs(0)), ["projector", "qformer"])
    tx = optim.make_optimizer(
        params, optax.constant_schedule(1e-2), weight_decay=0.0, lr_multipliers={"projector": 5.0}
    )
    grads = jax.tree.map(jnp.ones_like, params)
    upd, _ = tx.update(grads, tx.init(params), params)
    # Adam's first step moves every coordinate by lr (sign of grad): 5x for the projector.
    np.testing.assert_allclose(upd["projector"]["kernel"][...], -5e-2, rtol=1e-4)
    np.testing.assert_allclose(upd["qformer"]["kernel"][...], -1e-2, rtol=1e-4)


def test_crc32c_known_vector():
    assert crc32c(b"123456789") == 0xE3069283


@pytest.mark.parametrize("llm_type", ["opt", "llama"])
@pytest.mark.parametrize(
    "trainable", [("projector",), ("ln_vision", "query_tokens", "qformer", "projector")]
)
def test_step_flops_match_analytic_count(llm_type, trainable):
    """XLA's FLOPs for the step equal ViT fwd + Q-Former fwd(/bwd) + LLM fwd + LLM input-grad bwd:
    frozen towers compute no weight gradients; stage 1 runs the ViT and Q-Former forward only."""
    from vpgtrans_jax.models.llama import LlamaConfig
    from vpgtrans_jax.models.opt import OPTConfig
    from vpgtrans_jax.models.qformer import QFormerConfig
    from vpgtrans_jax.models.vit import VisionConfig
    from vpgtrans_jax.models.vl_model import VLConfig, VLModel
    from vpgtrans_jax.train import flops

    d = 512
    llm = (
        OPTConfig(
            vocab_size=4096,
            hidden_size=d,
            num_layers=2,
            num_heads=8,
            ffn_dim=4 * d,
            max_position_embeddings=256,
        )
        if llm_type == "opt"
        else LlamaConfig(
            vocab_size=4096,
            hidden_size=d,
            num_layers=2,
            num_heads=8,
            num_kv_heads=4,
            intermediate_size=3 * d,
            max_position_embeddings=256,
        )
    )
    cfg = VLConfig(
        vision=VisionConfig(
            image_size=112, patch_size=14, hidden_size=d, num_layers=2, num_heads=8, mlp_dim=4 * d
        ),
        qformer=QFormerConfig(
            hidden_size=d, num_layers=2, num_heads=8, intermediate_size=4 * d, encoder_hidden_size=d
        ),
        llm=llm,
        num_query_tokens=32,
    )
    b, t = 4, 64
    model = nnx.eval_shape(lambda: VLModel(cfg, rngs=nnx.Rngs(0)))
    graphdef, params, frozen = optim.split_trainable(model, trainable)
    tx = optax.adamw(1e-3)
    state = jax.eval_shape(lambda p: step_lib.TrainState.create(p, tx), params)
    spec = lambda *shape, dt=jnp.int32: jax.ShapeDtypeStruct(shape, dt)
    batch = {
        "pixel_values": spec(b, 112, 112, 3, dt=jnp.float32),
        "input_ids": spec(b, t),
        "attention_mask": spec(b, t),
        "labels": spec(b, t),
    }
    lowered = jax.jit(step_lib.make_train_step(graphdef, tx)).lower(state, frozen, batch)
    xla = lowered.cost_analysis()["flops"]
    analytic = flops.train_step_flops(cfg, trainable, b, t)["total"]
    assert abs(xla / analytic - 1) < 0.05, (xla, analytic)


def test_unreadable_latest_checkpoint_falls_back(tmp_path, caplog):
    from vpgtrans_jax.train import checkpointing

    state = {"w": jnp.arange(4.0)}
    ckpt = checkpointing.Checkpointer(str(tmp_path), every_steps=1, async_save=False)
    ckpt.save(1, state, {"pos": 1}, {"m": 1})
    ckpt.save(2, {"w": jnp.arange(4.0) + 10}, {"pos": 2}, {"m": 2})
    ckpt.wait()
    # Simulate a write cut short by preemption: the latest step's state files are garbage.
    for root, _, files in os.walk(tmp_path / "checkpoints" / "2" / "state"):
        for f in files:
            with open(os.path.join(root, f), "wb") as fh:
                fh.write(b"\x00garbage")
    abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), state)
    with caplog.at_level("WARNING"):
        restored, data_state, meta, step = ckpt.restore(abstract)
    ckpt.close()
    assert step == 1 and data_state == {"pos": 1} and meta == {"m": 1}
    np.testing.assert_array_equal(restored["w"], np.arange(4.0))
    assert any("unreadable" in r.message for r in caplog.records)
