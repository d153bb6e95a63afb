"""Two-stage exact top-k: same values and indices as ``lax.top_k``, ties included."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vpgtrans_jax.generation.topk import top_k


def _same(x: jax.Array, k: int, chunk: int = 128) -> None:
    want_v, want_i = jax.lax.top_k(x, k)
    got_v, got_i = top_k(x, k, chunk)
    np.testing.assert_array_equal(got_v, want_v)
    np.testing.assert_array_equal(got_i, want_i)
    assert got_i.dtype == jnp.int32


@settings(max_examples=25, deadline=None)
@given(
    rows=st.integers(1, 3),
    n=st.integers(4096, 9000),
    k=st.integers(1, 12),
    chunk=st.sampled_from([32, 128, 300]),
    distinct=st.sampled_from([3, 50, 0]),
    seed=st.integers(0, 2**31 - 1),
)
def test_matches_lax_top_k(rows, n, k, chunk, distinct, seed):
    """Random rows, many with heavy ties (few distinct values) and lengths off the chunk grid."""
    rng = np.random.default_rng(seed)
    if distinct:
        x = rng.integers(0, distinct, (rows, n)).astype(np.float32)
    else:
        x = rng.standard_normal((rows, n)).astype(np.float32)
    _same(jnp.asarray(x), k, chunk)


def test_masked_scores_and_a_single_winning_chunk():
    # Beam search's first step: every beam but the first sits at -1e9, -inf where forbidden.
    x = np.full((2, 5 * 2000), -1.0e9, np.float32)
    x[:, :2000] = np.random.default_rng(1).standard_normal((2, 2000))
    x[:, 7] = -np.inf
    x[1, 100:140] = 3.0  # 40 equal maxima inside one chunk region
    _same(jnp.asarray(x), 10)


def test_short_rows_and_bad_k():
    x = jnp.asarray(np.random.default_rng(2).standard_normal((3, 100)), jnp.float32)
    _same(x, 5)  # below the two-stage threshold: plain lax.top_k
    with pytest.raises(ValueError, match="k="):
        top_k(x, 0)
    with pytest.raises(ValueError, match="k="):
        top_k(x, 101)
