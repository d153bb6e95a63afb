"""grain pipelines: per-host sharding, mixing by ratio, worker processes, bad-sample tolerance,
checkpointable iterator state with exact resume, and per-host -> global arrays.

Training::

    it = train_iterator([("coco", coco_src, 0.1), ("vg", vg_src, 0.2), ("laion", laion_src, 0.7)],
                        SampleProcessor(SampleConfig(), tokenizer), batch_size=per_host_bs,
                        seed=0, num_workers=8)
    batch = next(it)                     # numpy dict, fixed shapes
    state = it.get_state()               # JSON-serialisable; save with the checkpoint
    it2 = train_iterator(...same args...); it2.set_state(state)  # continues with the next batch

Training: each source is shuffled and repeated forever, tagged with its name, then interleaved
by ``MapDataset.mix`` (deterministic weighted interleave, so proportions are exact over every
window). Augmentation randomness is derived from (seed, element index). That sequence is the
*global* one, the same for any number of hosts: global batch ``b`` is its elements
``[b * B, (b + 1) * B)`` and host ``h`` of ``n`` reads rows ``[h * B/n, (h + 1) * B/n)`` of it
(``_HostRows``). So the hosts never read the same element, every sample is read once per epoch
over all hosts together, and the global batch (the hosts' batches concatenated in process order)
does not depend on the host count: a 2-host run computes the losses of a 1-host run. (A bad
sample shifts the rows of its host only: that host reads its next element instead.) Evaluation
slices each source by host (``source[process_index::process_count]``). Output depends on
(arguments, num_workers): resuming needs the same worker count.
"""

from __future__ import annotations

import collections
import logging
import math
from collections.abc import Sequence
from typing import Any

import grain
import numpy as np

from vpgtrans_jax.data import text
from vpgtrans_jax.data.transforms import SampleProcessor
from vpgtrans_jax.errors import BadDataError

log = logging.getLogger(__name__)
_INFO_KEYS = ("_bad", "_key", "_source")
_MAX_EXAMPLES = 5  # bad examples named in errors


def _host_shard(shard_index: int | None, shard_count: int | None) -> tuple[int, int]:
    if shard_index is None or shard_count is None:
        import jax

        shard_index = jax.process_index() if shard_index is None else shard_index
        shard_count = jax.process_count() if shard_count is None else shard_count
    if not 0 <= shard_index < shard_count:
        raise ValueError(f"shard_index={shard_index} must be in [0, shard_count={shard_count})")
    return shard_index, shard_count


class _Tag(grain.transforms.Map):
    """Adds ``_source`` (the source name) to each record."""

    def __init__(self, name: str):
        self.name = name

    def map(self, element: dict[str, Any]) -> dict[str, Any]:
        return {**element, "_source": self.name}


def _collate_rows(rows: list[dict[str, Any]], buckets: Sequence[int] | None, left: bool) -> dict:
    """Collates processed rows: arrays stacked (bucketed), meta fields as object/int arrays."""
    if any("image_offset" in r for r in rows):
        # Samples whose own prompt has no <ImageHere> put the soft prompt first: offset 0.
        rows = [r if "image_offset" in r else {**r, "image_offset": np.int32(0)} for r in rows]
    array_keys = [k for k in rows[0] if isinstance(rows[0][k], np.ndarray | np.generic)]
    batch = text.collate([{k: r[k] for k in array_keys} for r in rows], buckets, left_padded=left)
    for k in rows[0]:
        if k in array_keys or k in _INFO_KEYS:
            continue
        vals = [r[k] for r in rows]
        ints = [v for v in vals if v is not None]
        if ints and all(isinstance(v, int | np.integer) for v in ints):
            batch[k] = np.array([-1 if v is None else v for v in vals], np.int64)
        else:
            arr = np.empty(len(vals), object)
            arr[:] = vals
            batch[k] = arr
    return batch


class _HostRows(grain.MapDataset):
    """This host's rows of the global sequence: element ``i`` is global element
    ``(i // rows) * rows * count + index * rows + i % rows`` (``rows`` = per-host batch)."""

    def __init__(self, parent: grain.MapDataset, index: int, count: int, rows: int):
        super().__init__(parent)
        self._index, self._count, self._rows = index, count, rows

    def __len__(self) -> int:
        return len(self._parent) // self._count

    def __getitem__(self, i):
        if isinstance(i, slice):
            return self.slice(i)
        batch, row = divmod(i, self._rows)
        return self._parent[(batch * self._count + self._index) * self._rows + row]

    def __str__(self) -> str:
        return f"HostRows(index={self._index}, count={self._count}, rows={self._rows})"


class _SkipBadBatchIterator(grain.DatasetIterator):
    """Fills each batch with ``batch_size`` good rows, counting and skipping bad ones."""

    def __init__(self, parent, batch_size, buckets, max_bad_fraction, min_samples):
        super().__init__(parent)
        self._batch_size = batch_size
        self._buckets = buckets
        self._max_bad_fraction = max_bad_fraction
        self._min_samples = min_samples
        self._seen = 0
        self._bad = 0
        self._examples: collections.deque = collections.deque(maxlen=_MAX_EXAMPLES)

    def __next__(self) -> dict[str, Any]:
        good, bad = [], []
        while len(good) < self._batch_size:
            row = next(self._parent)
            self._seen += 1
            if not row["_bad"]:
                good.append(row)
                continue
            self._bad += 1
            item = (row["_source"], row["_key"], row["_bad"])
            bad.append(item)
            self._examples.append(item)
            if self._seen >= self._min_samples and self._bad > self._max_bad_fraction * self._seen:
                examples = "; ".join(f"[{s}] {k}: {r}" for s, k, r in self._examples)
                raise BadDataError(
                    f"{self._bad} of {self._seen} samples were bad (more than max_bad_fraction="
                    f"{self._max_bad_fraction}); recent examples: {examples}"
                )
        batch = _collate_rows(good, self._buckets, left=False)
        batch["_bad_records"] = bad
        batch["_num_seen"] = len(good) + len(bad)
        batch["_source_counts"] = dict(collections.Counter(r["_source"] for r in good))
        return batch

    def get_state(self) -> dict[str, Any]:
        return {"parent": self._parent.get_state(), "seen": self._seen, "bad": self._bad}

    def set_state(self, state: dict[str, Any]) -> None:
        self._parent.set_state(state["parent"])
        self._seen, self._bad = int(state["seen"]), int(state["bad"])


class _SkipBadBatchDataset(grain.IterDataset):
    def __init__(self, parent, batch_size, buckets, max_bad_fraction, min_samples):
        super().__init__(parent)
        self._args = (batch_size, buckets, max_bad_fraction, min_samples)

    def __iter__(self) -> _SkipBadBatchIterator:
        return _SkipBadBatchIterator(self._parent.__iter__(), *self._args)


class DataIterator:
    """Iterator of numpy batches with bad-sample accounting and checkpointable state.

    ``metrics()`` gives ``data/seen``, ``data/bad``, ``data/bad_fraction`` and per-source
    ``data/samples/<name>`` counts (cumulative; restored by ``set_state``).
    """

    def __init__(self, dataset: grain.IterDataset, log_every_bad: int = 100):
        self._it = iter(dataset)
        self._log_every_bad = log_every_bad
        self._counts: collections.Counter = collections.Counter()

    def __iter__(self) -> DataIterator:
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        batch = next(self._it)
        bad = batch.pop("_bad_records", [])
        self._counts["seen"] += int(batch.pop("_num_seen", 0))
        for name, n in batch.pop("_source_counts", {}).items():
            self._counts[f"samples/{name}"] += n
        for source, key, reason in bad:
            self._counts["bad"] += 1
            self._counts[f"bad/{source}"] += 1
            n = self._counts["bad"]
            if n <= 20 or n % self._log_every_bad == 0:
                log.warning("skipped bad sample #%d [%s] %s: %s", n, source, key, reason)
        return batch

    def metrics(self) -> dict[str, float]:
        out = {f"data/{k}": float(v) for k, v in self._counts.items()}
        out.setdefault("data/seen", 0.0)
        out.setdefault("data/bad", 0.0)
        out["data/bad_fraction"] = out["data/bad"] / max(out["data/seen"], 1.0)
        return out

    def get_state(self) -> dict[str, Any]:
        return {"grain": self._it.get_state(), "counts": dict(self._counts)}

    def set_state(self, state: dict[str, Any]) -> None:
        self._it.set_state(state["grain"])
        self._counts = collections.Counter(state.get("counts", {}))

    def close(self) -> None:
        close = getattr(self._it, "close", None)
        if close is not None:
            close()


def _options(num_threads: int, prefetch: int) -> grain.ReadOptions:
    return grain.ReadOptions(num_threads=num_threads, prefetch_buffer_size=prefetch)


def _maybe_workers(ds: grain.IterDataset, num_workers: int, buffer: int) -> grain.IterDataset:
    if num_workers < 0:
        raise ValueError(f"num_workers must be >= 0, got {num_workers}")
    if num_workers == 0:
        return ds
    from absl import flags

    if not flags.FLAGS.is_parsed():  # grain's workers read absl flags; scripts may use argparse
        flags.FLAGS.mark_as_parsed()
    opts = grain.MultiprocessingOptions(num_workers=num_workers, per_worker_buffer_size=buffer)
    return ds.mp_prefetch(opts)


def train_iterator(
    sources: Sequence[tuple[str, Any, float]],
    processor: SampleProcessor,
    batch_size: int,
    seed: int = 0,
    num_workers: int = 0,
    max_bad_fraction: float = 0.05,
    min_samples_before_error: int = 100,
    buckets: Sequence[int] | None = None,
    shard_index: int | None = None,
    shard_count: int | None = None,
    num_threads: int = 4,
    prefetch: int = 16,
    worker_buffer_size: int = 2,
) -> DataIterator:
    """Endless per-host training batches from ``(name, source, weight)`` triples.

    ``batch_size`` is per host; host ``shard_index`` reads its rows of every global batch of
    ``batch_size * shard_count`` (module docstring). Bad rows are skipped; once at least
    ``min_samples_before_error`` samples were read (per worker), more than
    ``max_bad_fraction`` bad ones raise ``BadDataError`` naming recent examples.
    """
    if not sources:
        raise ValueError("train_iterator needs at least one (name, source, weight)")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if not 0.0 <= max_bad_fraction < 1.0:
        raise ValueError(f"max_bad_fraction must be in [0, 1), got {max_bad_fraction}")
    if processor.config.mode != "train":
        raise ValueError("train_iterator needs a SampleProcessor with mode='train'")
    index, count = _host_shard(shard_index, shard_count)
    parts, weights = [], []
    for k, (name, source, weight) in enumerate(sources):
        if weight <= 0:
            raise ValueError(f"source {name!r}: weight must be > 0, got {weight}")
        ds = grain.MapDataset.source(source)
        ds = ds.shuffle(seed=(seed * 1_000_003 + k) % 2**32).repeat().map(_Tag(name))
        parts.append(ds)
        weights.append(float(weight))
    ds = grain.MapDataset.mix(parts, weights) if len(parts) > 1 else parts[0]
    ds = ds.random_map(processor, seed=seed)  # keyed by the global index: host-count independent
    if count > 1:
        ds = _HostRows(ds, index, count, batch_size)
    it_ds = ds.to_iter_dataset(_options(num_threads, prefetch))
    it_ds = _SkipBadBatchDataset(
        it_ds, batch_size, buckets, max_bad_fraction, min_samples_before_error
    )
    return DataIterator(_maybe_workers(it_ds, num_workers, worker_buffer_size))


class _PadTo(grain.transforms.Map):
    """Index -> record of ``source`` (this host's slice) or a padding record past its end."""

    def __init__(self, source: grain.MapDataset):
        self.source = source

    def map(self, index: int) -> dict[str, Any]:
        if index < len(self.source):
            return self.source[index]
        # The template lets padding rows give meta fields of the same type (-1, "", []).
        return {"_pad": True, "_template": self.source[0] if len(self.source) else {}}


class _EvalCollate:
    def __init__(self, left: bool):
        self.left = left

    def __call__(self, rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
        batch = _collate_rows(list(rows), None, left=self.left)
        bad = [(r["_source"], r["_key"], r["_bad"]) for r in rows if r["_bad"]]
        batch["_bad_records"] = bad
        batch["_num_seen"] = int(sum(1 for r in rows if r["_key"]))
        return batch


def eval_iterator(
    source: Any,
    processor: SampleProcessor,
    batch_size: int,
    name: str = "eval",
    num_workers: int = 0,
    shard_index: int | None = None,
    shard_count: int | None = None,
    num_threads: int = 4,
    prefetch: int = 16,
) -> DataIterator:
    """One pass over ``source`` in fixed-shape batches with a ``valid`` int32[B] row mask.

    Every host yields the same number of batches (``ceil(ceil(N / hosts) / batch_size)``), the
    tail padded with ``valid = 0`` rows; bad samples also come back with ``valid = 0`` (and are
    counted) so answers can be matched to ids through the meta keys.
    """
    index, count = _host_shard(shard_index, shard_count)
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    per_host = math.ceil(len(source) / count)
    num_batches = math.ceil(per_host / batch_size)
    shard = grain.MapDataset.source(source)[index::count].map(_Tag(name))
    ds = grain.MapDataset.range(num_batches * batch_size).map(_PadTo(shard))
    ds = ds.random_map(processor, seed=0)
    left = processor.config.mode == "generate"
    ds = ds.batch(batch_size, batch_fn=_EvalCollate(left))
    it_ds = ds.to_iter_dataset(_options(num_threads, prefetch))
    return DataIterator(_maybe_workers(it_ds, num_workers, 2))


def make_global_batch(batch: dict[str, np.ndarray], mesh, batch_axes=("data", "fsdp")) -> dict:
    """Per-host numpy batch -> global ``jax.Array``s sharded over ``batch_axes`` on dim 0.

    Object (string) arrays are left on the host. The global batch is the concatenation of the
    hosts' batches in process order.
    """
    import jax
    from jax.sharding import NamedSharding, PartitionSpec

    out = {}
    for k, v in batch.items():
        if v.dtype == object:
            out[k] = v
            continue
        spec = PartitionSpec(batch_axes, *([None] * (v.ndim - 1)))
        out[k] = jax.make_array_from_process_local_data(NamedSharding(mesh, spec), v)
    return out
