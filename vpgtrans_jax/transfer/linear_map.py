"""Fitting a linear map y ≈ x @ kernel + bias between two embedding tables with optax SGD.

This is the optimisation core of the word converter, independent of LLMs and tokenizers: rows of
``src`` are paired with rows of ``tgt`` through an index array, and the map is trained with loss
``1 - cos(g(x), y)`` (VPGTrans) or the mean squared error. Distinct pairs are split into a training
part and a held-out part (whole distinct pairs, so held-out tokens were never seen in training);
training iterates over *occurrences*, so frequent pairs weigh more.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax

LOSSES = ("cosine", "mse")


@dataclasses.dataclass(frozen=True)
class FitConfig:
    """Training hyper-parameters (defaults: the original VPGTrans recipe).

    Attributes:
      loss: ``"cosine"`` (1 - cos, the original) or ``"mse"`` (mean over pairs and dims; the
        default lr of 5 suits unit-scale embeddings, tune it for others).
      lr: SGD learning rate. momentum: SGD momentum (0 = plain SGD as in the original).
      batch_size: token pairs per step. epochs: passes over the training occurrences.
      heldout_fraction: share of distinct pairs held out for the reported cosine.
      seed: initialisation, shuffling and the held-out split.
    """

    loss: str = "cosine"
    lr: float = 5.0
    momentum: float = 0.0
    batch_size: int = 4096
    epochs: int = 8
    heldout_fraction: float = 0.05
    seed: int = 0

    def __post_init__(self):
        if self.loss not in LOSSES:
            raise ValueError(f"loss must be one of {LOSSES}, got {self.loss!r}")
        if not self.lr > 0:
            raise ValueError(f"lr must be positive, got {self.lr!r}")
        if not 0 <= self.momentum < 1:
            raise ValueError(f"momentum must be in [0, 1), got {self.momentum!r}")
        for name in ("batch_size", "epochs"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) <= 0:
                raise ValueError(f"{name} must be a positive int, got {getattr(self, name)!r}")
        if not 0 <= self.heldout_fraction < 1:
            raise ValueError(f"heldout_fraction must be in [0, 1), got {self.heldout_fraction!r}")


@dataclasses.dataclass(frozen=True)
class FitResult:
    """kernel float32[Ds, Dt], bias float32[Dt], and the metrics of the run."""

    kernel: np.ndarray
    bias: np.ndarray
    metrics: dict


def cosine(pred: jax.Array, target: jax.Array) -> jax.Array:
    """Row-wise cosine similarity of float[N, D] arrays → float[N] (0 where a row is zero)."""
    dot = jnp.sum(pred * target, axis=-1)
    norms = jnp.linalg.norm(pred, axis=-1) * jnp.linalg.norm(target, axis=-1)
    return dot / jnp.maximum(norms, 1e-12)


def _per_pair_loss(kind: str) -> Callable[[jax.Array, jax.Array], jax.Array]:
    if kind == "cosine":
        return lambda p, y: 1.0 - cosine(p, y)
    return lambda p, y: jnp.mean(jnp.square(p - y), axis=-1)


def split_pairs(
    pairs: np.ndarray, heldout_fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """int[N, 2] occurrences → (training occurrences int[M, 2], distinct held-out pairs int[H, 2]).

    At least one distinct pair always stays in training; none is held out when the fraction is 0.
    """
    distinct, inverse = np.unique(pairs, axis=0, return_inverse=True)
    inverse = inverse.reshape(-1)
    n_held = min(int(round(heldout_fraction * len(distinct))), len(distinct) - 1)
    order = np.random.default_rng(seed).permutation(len(distinct))
    held = np.zeros(len(distinct), bool)
    held[order[:n_held]] = True
    return pairs[~held[inverse]], distinct[held]


def fit_linear_map(
    src: np.ndarray,
    tgt: np.ndarray,
    pairs: np.ndarray,
    cfg: FitConfig = FitConfig(),
    *,
    log: Callable[[str], None] | None = None,
) -> FitResult:
    """Trains g(x) = x @ kernel + bias so that g(src[i]) ≈ tgt[j] for each pair (i, j).

    Args:
      src: float[Us, Ds] source rows; tgt: float[Ut, Dt] target rows.
      pairs: int[N, 2] occurrences (row of ``src``, row of ``tgt``); duplicates weigh more.
      cfg: hyper-parameters. log: optional progress callback (one line per epoch).

    Returns:
      ``FitResult`` with metrics ``train_cosine``/``heldout_cosine`` (means over distinct pairs;
      ``heldout_cosine`` is None without a held-out set), ``final_loss`` and counts.
    """
    pairs = np.asarray(pairs, np.int32).reshape(-1, 2)
    if len(pairs) == 0:
        raise ValueError("no aligned token pairs to train on")
    for col, table, name in ((0, src, "source"), (1, tgt, "target")):
        if pairs[:, col].min() < 0 or pairs[:, col].max() >= len(table):
            raise ValueError(
                f"pair column {col} indexes outside the {name} table ({len(table)} rows)"
            )
    train, heldout = split_pairs(pairs, cfg.heldout_fraction, cfg.seed)
    src_d = jnp.asarray(src, jnp.float32)
    tgt_d = jnp.asarray(tgt, jnp.float32)
    ds, dt = src_d.shape[1], tgt_d.shape[1]

    key = jax.random.key(cfg.seed)
    bound = 1.0 / np.sqrt(ds)  # torch nn.Linear's default kernel init; zero bias
    params = {
        "kernel": jax.random.uniform(key, (ds, dt), jnp.float32, -bound, bound),
        "bias": jnp.zeros((dt,), jnp.float32),
    }
    tx = optax.sgd(cfg.lr, momentum=cfg.momentum or None)
    opt_state = tx.init(params)
    pair_loss = _per_pair_loss(cfg.loss)

    def batch_loss(p, idx, w):
        pred = src_d[idx[:, 0]] @ p["kernel"] + p["bias"]
        losses = pair_loss(pred, tgt_d[idx[:, 1]])
        return jnp.sum(w * losses) / jnp.maximum(jnp.sum(w), 1.0)

    def step(carry, batch):
        p, s = carry
        idx, w = batch
        loss, grads = jax.value_and_grad(batch_loss)(p, idx, w)
        updates, s = tx.update(grads, s, p)
        return (optax.apply_updates(p, updates), s), loss

    @jax.jit
    def epoch(p, s, idx, w):
        (p, s), losses = jax.lax.scan(step, (p, s), (idx, w))
        return p, s, losses

    rng = np.random.default_rng(cfg.seed + 1)
    b = cfg.batch_size
    n_steps = -(-len(train) // b)
    losses = np.zeros(0)
    for e in range(cfg.epochs):
        # Pad the last batch with weight-0 rows so every step has the same (jitted) shape.
        order = np.zeros(n_steps * b, np.int64)
        order[: len(train)] = rng.permutation(len(train))
        weight = (np.arange(n_steps * b) < len(train)).astype(np.float32)
        idx = train[order].reshape(n_steps, b, 2)
        params, opt_state, losses = epoch(params, opt_state, idx, weight.reshape(n_steps, b))
        losses = np.asarray(losses)
        if not np.all(np.isfinite(losses)):
            raise FloatingPointError(
                f"word converter diverged in epoch {e + 1} (loss {losses[-1]}); lower lr={cfg.lr}"
            )
        if log:
            log(f"epoch {e + 1}/{cfg.epochs}: mean {cfg.loss} loss {losses.mean():.6f}")

    def mean_cos(rows: np.ndarray) -> float | None:
        if len(rows) == 0:
            return None
        pred = src_d[rows[:, 0]] @ params["kernel"] + params["bias"]
        return float(jnp.mean(cosine(pred, tgt_d[rows[:, 1]])))

    metrics = {
        "train_cosine": mean_cos(np.unique(train, axis=0)),
        "heldout_cosine": mean_cos(heldout),
        "final_loss": float(losses[-1]),
        "train_occurrences": int(len(train)),
        "heldout_pairs": int(len(heldout)),
        "steps": int(n_steps * cfg.epochs),
    }
    return FitResult(np.asarray(params["kernel"]), np.asarray(params["bias"]), metrics)
