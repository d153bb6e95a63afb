"""Beam search with Hugging Face's semantics (``GenerationMixin._beam_search``, transformers 5).

Per prompt, ``K = num_beams`` running hypotheses and ``K`` finished ones, all in static arrays:

1. log-softmax of the next-token logits, processors, plus each running beam's score;
2. the best ``K2 = max(2, 1 + n_eos) * K`` continuations over ``K * V`` candidates (sampled
   without replacement via Gumbel-top-k with ``do_sample``);
3. the best ``K`` candidates that did not just end (EOS, or max length) keep running;
4. candidates among the top ``K`` that did end compete with the finished set on
   ``score / new_length ** length_penalty``;
5. HF's early-stopping heuristic decides whether a prompt can still improve; the loop stops when
   none can, or every candidate ended.

Scores use the same float32 arithmetic (including the ``-1e9`` masking) as the reference, so
token ids match it exactly. After every step the cache follows the surviving beams
(``BeamKVCache.select_rows``: only its ancestry table moves).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from vpgtrans_jax.generation import processors, topk
from vpgtrans_jax.generation.config import GenerationConfig, length_penalty_table
from vpgtrans_jax.generation.greedy import StepFn
from vpgtrans_jax.nn.kv_cache import KVCache

_MASK = -1.0e9  # HF's "impossible" score


def _gather(x: jax.Array, idx: jax.Array) -> jax.Array:
    """x[B, K, ...] gathered along the beam axis with int[B, J] -> [B, J, ...]."""
    idx = idx.reshape(idx.shape + (1,) * (x.ndim - 2))
    return jnp.take_along_axis(x, idx, axis=1)


def reorder_cache(cache: KVCache, rows: jax.Array) -> KVCache:
    """Row ``n`` of the result continues row ``rows[n]`` (int[N]) of ``cache``."""
    return cache.select_rows(rows)


def _top_continuations(flat: jax.Array, k2: int, cfg: GenerationConfig, key: jax.Array):
    """float32[B, K*V] accumulated scores -> (values, indices) of K2 picks, best first."""
    if not cfg.do_sample:
        return topk.top_k(flat, k2)
    # Gumbel-top-k = sampling k2 candidates without replacement from softmax(flat).
    gumbel = jax.random.gumbel(key, flat.shape, jnp.float32)
    _, idx = topk.top_k(flat + gumbel, k2)
    vals = jnp.take_along_axis(flat, idx, axis=-1)
    vals, order = jax.lax.top_k(vals, k2)  # sort descending, as HF does after sampling
    return vals, jnp.take_along_axis(idx, order, axis=-1)


def beam_search(
    first_logits: jax.Array,
    cache: KVCache,
    step_fn: StepFn,
    cfg: GenerationConfig,
    key: jax.Array,
    prompt_seen: jax.Array | None = None,
) -> jax.Array:
    """Runs beam search for ``B = N / num_beams`` prompts.

    Args:
      first_logits: float32[N, V] logits after each prompt, ``N = B * num_beams`` (each prompt's
        row repeated ``num_beams`` times, beam-major within a prompt), as is the cache.
      step_fn: feeds int32[N] tokens (new token number ``i``) and returns the next logits.
      key: PRNG key for beam sampling.
      prompt_seen: bool[N, V] prompt tokens, for the repetition penalty.

    Returns:
      int32[B * num_return_sequences, max_new_tokens]: each prompt's best finished hypotheses,
      best first, ``pad_token_id`` after EOS.
    """
    n, vocab = first_logits.shape
    nb, m = cfg.num_beams, cfg.max_new_tokens
    b = n // nb
    k2 = max(2, 1 + len(cfg.eos_token_ids)) * nb
    eos = jnp.asarray(cfg.eos_token_ids, jnp.int32)
    lp = jnp.asarray(length_penalty_table(m, cfg.length_penalty))
    top_mask = jnp.arange(k2) < nb
    stop_all_done = cfg.early_stopping is True
    best_len_is_max = cfg.early_stopping == "never" and cfg.length_penalty > 0.0

    def step(state: dict[str, Any], logits: jax.Array) -> dict[str, Any]:
        i = state["i"]  # new tokens so far; candidates write position i
        logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
        seen = None
        if prompt_seen is not None:
            flat_seqs = state["running"].reshape(n, m)
            written = jnp.arange(m)[None, :] < i
            seen = prompt_seen | processors.token_presence(flat_seqs, written, vocab)
        logp = processors.process(logp, cfg, i, seen)
        acc = logp.reshape(b, nb, vocab) + state["running_scores"][:, :, None]
        vals, idx = _top_continuations(
            acc.reshape(b, nb * vocab), k2, cfg, jax.random.fold_in(key, i)
        )
        src = idx // vocab
        tok = (idx % vocab).astype(jnp.int32)
        cand = _gather(state["running"], src)
        cand = jax.lax.dynamic_update_slice_in_dim(cand, tok[:, :, None], i, axis=2)
        hits = jnp.isin(tok, eos) | (i + 1 >= m)

        # Running beams for the next step: the best K that did not just end.
        run_scores = vals + hits.astype(jnp.float32) * _MASK
        nxt = jax.lax.top_k(run_scores, nb)[1]
        running = _gather(cand, nxt)
        running_scores = _gather(run_scores, nxt)
        parent = _gather(src, nxt)

        # Finished hypotheses: merge the top-K candidates that just ended.
        fin = vals / lp[i]
        full = jnp.all(state["finished"], axis=-1, keepdims=True) & stop_all_done
        fin = fin + full.astype(jnp.float32) * _MASK
        fin = fin + (~state["unsat"]).astype(jnp.float32) * _MASK
        just_done = hits & top_mask[None, :]
        fin = fin + (~just_done).astype(jnp.float32) * _MASK
        merged_scores = jnp.concatenate([state["scores"], fin], axis=1)
        keep = jax.lax.top_k(merged_scores, nb)[1]
        seqs = _gather(jnp.concatenate([state["seqs"], cand], axis=1), keep)
        scores = _gather(merged_scores, keep)
        finished = _gather(jnp.concatenate([state["finished"], just_done], axis=1), keep)

        # Can a running beam still beat the worst finished one? (HF's heuristic)
        best_len = lp[m - 1] if best_len_is_max else lp[i]
        best_possible = running_scores[:, :1] / best_len
        worst = jnp.where(finished, jnp.min(scores, axis=1, keepdims=True), _MASK)
        unsat = state["unsat"] & jnp.any(best_possible > worst, axis=-1, keepdims=True)
        go_on = jnp.any(unsat) & ~(jnp.all(finished) & stop_all_done) & ~jnp.all(hits)
        rows = (jnp.arange(b)[:, None] * nb + parent).reshape(n)
        return dict(
            i=i + 1,
            running=running,
            running_scores=running_scores,
            seqs=seqs,
            scores=scores,
            finished=finished,
            unsat=unsat,
            go_on=go_on,
            cache=reorder_cache(state["cache"], rows),
        )

    init_scores = jnp.where(jnp.arange(nb) == 0, 0.0, _MASK).astype(jnp.float32)
    blank = jnp.full((b, nb, m), cfg.pad_token_id, jnp.int32)
    state = dict(
        i=jnp.int32(0),
        running=blank,
        running_scores=jnp.broadcast_to(init_scores, (b, nb)),
        seqs=blank,
        scores=jnp.full((b, nb), _MASK, jnp.float32),
        finished=jnp.zeros((b, nb), bool),
        unsat=jnp.ones((b, 1), bool),
        go_on=jnp.bool_(True),
        cache=cache,
    )
    state = step(state, first_logits)

    def cond(state):
        return state["go_on"] & (state["i"] < m)

    def body(state):
        i = state["i"]
        last = jax.lax.dynamic_index_in_dim(state["running"], i - 1, axis=2, keepdims=False)
        logits, cache = step_fn(last.reshape(n), state["cache"], i - 1)
        return step({**state, "cache": cache}, logits)

    state = jax.lax.while_loop(cond, body, state)
    return state["seqs"][:, : cfg.num_return_sequences].reshape(-1, m)
