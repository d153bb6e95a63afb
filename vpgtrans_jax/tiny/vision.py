"""The micro world's vision encoder: a small ViT pretrained on the scene attributes, then frozen.

VPGTrans keeps the image encoder frozen (BLIP-2's EVA ViT was pretrained on web images long
before). The micro experiment needs the same: an encoder whose features already hold what the
captions talk about. ``pretrain_vit`` trains the project's own ``VisionTransformer`` on freshly
drawn scenes (never the world's training or evaluation images) to predict, from its output
tokens, each grid cell's occupancy, shape, colour and size, the background and the object count.
``linear_probe`` then fits fresh linear classifiers on the frozen features of other fresh scenes
and reports their accuracy on the world's held-out evaluation images: evidence that the frozen
features carry the attributes, before any VL training.

Features are ``LayerNorm(ViT(x))`` flattened over tokens (``[CLS, patches]``), the tokens the
Q-Former cross-attends to.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import nnx

from vpgtrans_jax.data.processors import blip_image_eval
from vpgtrans_jax.models.vit import VisionConfig, VisionTransformer
from vpgtrans_jax.nn.layers import Dense, LayerNorm
from vpgtrans_jax.tiny import scenes
from vpgtrans_jax.train.config_base import arch_dict

log = logging.getLogger(__name__)

NUM_CELLS = len(scenes.CELLS)
# (name, classes) of the per-cell attributes; all but occupancy only count where a cell holds an
# object. Per image: "count" (max_objects classes) and "background".
CELL_HEADS = (
    ("occupied", 2),
    ("shape", len(scenes.SHAPES)),
    ("color", len(scenes.COLORS)),
    ("size", len(scenes.SIZES)),
)
_COLORS, _BGS = list(scenes.COLORS), list(scenes.BACKGROUNDS)


def vision_config() -> ml_collections.ConfigDict:
    """``config.tiny.micro.vision``: the ViT's architecture and its pretraining / probe runs."""
    return ml_collections.ConfigDict(
        {
            "arch": arch_dict(
                VisionConfig,
                image_size=48,
                patch_size=8,
                hidden_size=64,
                num_layers=2,
                num_heads=4,
                mlp_dim=128,
            ),
            "seed": 1,  # scenes drawn with default_rng([1000 + seed, i]): not the world's
            "pool_images": 6000,
            "steps": 1200,
            "batch_size": 64,
            "lr": 2e-3,
            "warmup_steps": 50,
            "probe_images": 2000,
            "probe_steps": 300,
        }
    )


def labels(scene: scenes.Scene, max_objects: int) -> dict[str, np.ndarray]:
    """The classification targets of a scene: ``count`` (objects - 1), ``background``, and per
    cell ``occupied`` / ``shape`` / ``color`` / ``size`` (int[9]; -1 where the cell is empty)."""
    out = {
        "count": np.int32(len(scene.objects) - 1),
        "background": np.int32(_BGS.index(scene.background)),
        **{name: np.full(NUM_CELLS, -1, np.int32) for name, _ in CELL_HEADS},
    }
    out["occupied"][:] = 0
    for o in scene.objects:
        out["occupied"][o.cell] = 1
        out["shape"][o.cell] = scenes.SHAPES.index(o.shape)
        out["color"][o.cell] = _COLORS.index(o.color)
        out["size"][o.cell] = scenes.SIZES.index(o.size)
    return out


def render_pool(
    seed: int, n: int, image_size: int, max_objects: int
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """``n`` fresh scenes as the VL model sees them (JPEG round trip, ``blip_image_eval``):
    float32[n, S, S, 3] and stacked ``labels``."""
    pixels, rows = [], []
    for i in range(n):
        rng = np.random.default_rng([1000 + seed, i])
        scene = scenes.sample_scene(rng, max_objects)
        jpeg = scenes.encode_jpeg(scenes.render(scene, image_size, rng))
        pixels.append(blip_image_eval(jpeg, image_size))
        rows.append(labels(scene, max_objects))
    return np.stack(pixels), {k: np.stack([r[k] for r in rows]) for k in rows[0]}


def load_split(
    images: list[tuple[int, str]],
    scene_of: Callable[[int], scenes.Scene],
    image_size: int,
    max_objects: int,
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """A world split's images (``[(image_id, path)]``) with the labels of their scenes."""
    pixels = np.stack([blip_image_eval(path, image_size) for _, path in images])
    rows = [labels(scene_of(i), max_objects) for i, _ in images]
    return pixels, {k: np.stack([r[k] for r in rows]) for k in rows[0]}


class AttributeHeads(nnx.Module):
    """LayerNorm over the ViT tokens, flattened, then one linear classifier per attribute."""

    def __init__(self, num_tokens: int, width: int, max_objects: int, *, rngs: nnx.Rngs):
        self.norm = LayerNorm(width, eps=1e-5, rngs=rngs)
        self.sizes = {"count": max_objects, "background": len(scenes.BACKGROUNDS)}
        self.sizes.update({name: NUM_CELLS * k for name, k in CELL_HEADS})
        total = sum(self.sizes.values())
        self.out = Dense(num_tokens * width, total, axes=(None, None), rngs=rngs)

    def features(self, tokens: jax.Array) -> jax.Array:
        """float[B, T, D] ViT tokens → float[B, T * D]."""
        x = self.norm(tokens)
        return x.reshape(x.shape[0], -1)

    def __call__(self, feats: jax.Array) -> dict[str, jax.Array]:
        """float[B, F] → per attribute logits float[B, K] (cells: float[B, 9, K])."""
        return self.split(self.out(feats))

    def split(self, logits: jax.Array) -> dict[str, jax.Array]:
        """float[B, sum K] → per attribute logits (see ``__call__``)."""
        out, start = {}, 0
        for name, size in self.sizes.items():
            chunk = logits[:, start : start + size]
            start += size
            per_cell = name not in ("count", "background")
            out[name] = chunk.reshape(chunk.shape[0], NUM_CELLS, -1) if per_cell else chunk
        return out


def _loss(logits: dict[str, jax.Array], y: dict[str, jax.Array]) -> jax.Array:
    total = 0.0
    for name, lg in logits.items():
        target = y[name]
        valid = target >= 0
        ce = optax.softmax_cross_entropy_with_integer_labels(lg, jnp.maximum(target, 0))
        total = total + jnp.sum(jnp.where(valid, ce, 0.0)) / jnp.maximum(valid.sum(), 1)
    return total


def accuracies(logits: dict[str, Any], y: dict[str, np.ndarray]) -> dict[str, float]:
    """Accuracy per attribute (per-cell attributes over the cells that hold an object)."""
    out = {}
    for name, lg in logits.items():
        pred = np.asarray(lg).argmax(-1)
        valid = y[name] >= 0
        out[name] = float((pred == y[name])[valid].mean())
    return out


def _train(
    params_of: Callable[[], Any],
    loss_of: Callable[[Any, jax.Array, dict], jax.Array],
    x: np.ndarray,
    y: dict[str, np.ndarray],
    *,
    steps: int,
    batch_size: int,
    lr: float,
    warmup: int,
    seed: int,
) -> tuple[Any, float]:
    params = params_of()
    warmup = min(warmup, max(steps - 1, 0))  # a short run keeps one decay step
    sched = optax.warmup_cosine_decay_schedule(0.0, lr, warmup, max(steps, warmup + 1), lr * 0.05)
    tx = optax.adamw(sched, weight_decay=1e-4)
    opt = tx.init(params)

    @jax.jit
    def step(params, opt, xb, yb):
        loss, grads = jax.value_and_grad(loss_of)(params, xb, yb)
        updates, opt = tx.update(grads, opt, params)
        return optax.apply_updates(params, updates), opt, loss

    rng = np.random.default_rng(seed)
    loss = jnp.zeros(())
    for _ in range(steps):
        idx = rng.integers(0, len(x), size=min(batch_size, len(x)))
        params, opt, loss = step(params, opt, x[idx], {k: v[idx] for k, v in y.items()})
    return params, float(loss)


def pretrain_vit(
    vc: ml_collections.ConfigDict, max_objects: int
) -> tuple[VisionTransformer, dict[str, Any]]:
    """Pretrains the ViT of ``vc.arch`` on ``vc.pool_images`` fresh scenes; returns it and facts."""
    t0 = time.time()
    cfg = VisionConfig(**vc.arch.to_dict())
    x, y = render_pool(vc.seed, vc.pool_images, cfg.image_size, max_objects)
    rngs = nnx.Rngs(params=jax.random.key(vc.seed))
    vit = VisionTransformer(cfg, rngs=rngs)
    heads = AttributeHeads(cfg.num_patches + 1, cfg.hidden_size, max_objects, rngs=rngs)
    graphdef, _ = nnx.split((vit, heads))

    def loss_of(params, xb, yb):
        v, h = nnx.merge(graphdef, params)
        return _loss(h(h.features(v(xb))), yb)

    params, loss = _train(
        lambda: nnx.state((vit, heads), nnx.Param),
        loss_of,
        x,
        y,
        steps=vc.steps,
        batch_size=vc.batch_size,
        lr=vc.lr,
        warmup=vc.warmup_steps,
        seed=vc.seed,
    )
    nnx.update((vit, heads), params)
    return vit, {"final_loss": loss, "pool_images": len(x), "steps": vc.steps,
                 "wall_time_s": time.time() - t0}  # fmt: skip


def linear_probe(
    vit: VisionTransformer,
    vc: ml_collections.ConfigDict,
    max_objects: int,
    heldout: tuple[np.ndarray, dict[str, np.ndarray]],
) -> dict[str, Any]:
    """Fresh linear classifiers on the frozen features of ``vc.probe_images`` fresh scenes;
    their accuracy per attribute on ``heldout`` (the world's evaluation images)."""
    cfg = vit.config
    x, y = render_pool(vc.seed + 1, vc.probe_images, cfg.image_size, max_objects)
    rngs = nnx.Rngs(params=jax.random.key(vc.seed + 1))
    probe = AttributeHeads(cfg.num_patches + 1, cfg.hidden_size, max_objects, rngs=rngs)
    encode = jax.jit(lambda px: probe.features(vit(px)))  # a fresh (untrained) LayerNorm
    feats = np.concatenate([np.asarray(encode(x[i : i + 256])) for i in range(0, len(x), 256)])
    hx, hy = heldout
    h_feats = np.concatenate([np.asarray(encode(hx[i : i + 256])) for i in range(0, len(hx), 256)])
    graphdef, _ = nnx.split(probe.out)

    def loss_of(params, fb, yb):
        return _loss(probe.split(nnx.merge(graphdef, params)(fb)), yb)

    params, _ = _train(
        lambda: nnx.state(probe.out, nnx.Param),
        loss_of,
        feats,
        y,
        steps=vc.probe_steps,
        batch_size=len(feats),  # full batch: a convex fit
        lr=1e-2,
        warmup=0,
        seed=vc.seed,
    )
    head = nnx.merge(graphdef, params)
    acc = accuracies(probe.split(head(h_feats)), hy)
    train_acc = accuracies(probe.split(head(feats)), y)
    return {
        "heldout_accuracy": acc,
        "train_accuracy": train_acc,
        "heldout_images": len(hx),
        "probe_images": len(x),
        "mean_heldout_accuracy": float(np.mean(list(acc.values()))),
    }
