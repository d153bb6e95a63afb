"""Peak resident memory of ``convert/hf_to_orbax.py`` on a generated random OPT-1.3B-shaped
checkpoint (``convert/bench_memory.py``).

Writes a random fp16 ``OPTForCausalLM`` directory (3 safetensors shards + index) under ``work``,
converts it in a child process and prints the child's peak RSS next to the largest shard. Nothing
is downloaded; delete ``work`` afterwards (several GB).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import numpy as np

from vpgtrans_jax.checkpoint.safetensors import write_safetensors
from vpgtrans_jax.outputs import atomic_output

OPT_1_3B = dict(vocab_size=50272, hidden_size=2048, num_hidden_layers=24, ffn_dim=8192,
                num_attention_heads=32, max_position_embeddings=2048)  # fmt: skip


def opt_shapes(c: dict) -> list[tuple[str, tuple[int, ...]]]:
    """(key, shape) of every ``OPTForCausalLM`` tensor in ``save_pretrained`` order (tied head)."""
    h, f, p = c["hidden_size"], c["ffn_dim"], "model.decoder."
    out = [(p + "embed_tokens.weight", (c["vocab_size"], h)),
           (p + "embed_positions.weight", (c["max_position_embeddings"] + 2, h)),
           (p + "final_layer_norm.weight", (h,)), (p + "final_layer_norm.bias", (h,))]  # fmt: skip
    for i in range(c["num_hidden_layers"]):
        q = f"{p}layers.{i}."
        for n in ("q_proj", "k_proj", "v_proj", "out_proj"):
            out += [(q + f"self_attn.{n}.weight", (h, h)), (q + f"self_attn.{n}.bias", (h,))]
        out += [(q + "fc1.weight", (f, h)), (q + "fc1.bias", (f,)),
                (q + "fc2.weight", (h, f)), (q + "fc2.bias", (h,))]  # fmt: skip
        for n in ("self_attn_layer_norm", "final_layer_norm"):
            out += [(q + f"{n}.weight", (h,)), (q + f"{n}.bias", (h,))]
    return out


def generate(directory: str, shards: int = 3) -> list[int]:
    """Writes the random checkpoint (whole, never into a non-empty directory); returns the shard
    sizes in bytes."""
    with atomic_output(directory, kind="benchmark checkpoint",
                       created_by="convert/bench_memory.py") as tmp:  # fmt: skip
        return _write_checkpoint(tmp, shards)


def _write_checkpoint(directory: str, shards: int) -> list[int]:
    shapes = opt_shapes(OPT_1_3B)
    total = sum(int(np.prod(s)) * 2 for _, s in shapes)
    rng = np.random.default_rng(0)
    groups: list[list[tuple[str, tuple[int, ...]]]] = [[]]
    size = 0
    for key, shape in shapes:
        n = int(np.prod(shape)) * 2
        if size + n > total / shards * 1.01 and len(groups) < shards:
            groups.append([])
            size = 0
        groups[-1].append((key, shape))
        size += n
    names = [f"model-{i + 1:05d}-of-{len(groups):05d}.safetensors" for i in range(len(groups))]
    for name, group in zip(names, groups):
        tensors = {k: (rng.standard_normal(s, np.float32) * 0.02).astype(np.float16)
                   for k, s in group}  # fmt: skip
        write_safetensors(os.path.join(directory, name), tensors)
        del tensors
    index = {"metadata": {"total_size": total},
             "weight_map": {k: n for n, g in zip(names, groups) for k, _ in g}}  # fmt: skip
    with open(os.path.join(directory, "model.safetensors.index.json"), "w") as f:
        json.dump(index, f)
    config = dict(
        OPT_1_3B, model_type="opt", architectures=["OPTForCausalLM"], word_embed_proj_dim=2048,
        do_layer_norm_before=True, torch_dtype="float16",
    )  # fmt: skip
    with open(os.path.join(directory, "config.json"), "w") as f:
        json.dump(config, f)
    return [os.path.getsize(os.path.join(directory, n)) for n in names]


def run(work: str, tool: str, dtype: str = "float32", extra: tuple[str, ...] = ()) -> dict:
    """Generates the checkpoint (once), converts it with ``tool`` (``convert/hf_to_orbax.py``) in
    a child process and prints the child's peak RSS; returns the figures in bytes."""
    src = os.path.join(work, "opt-1.3b-random")
    if not os.path.exists(os.path.join(src, "model.safetensors.index.json")):
        # In a child: Linux carries a process's peak RSS across fork+exec into its children.
        code = f"from vpgtrans_jax.bench.memory import generate; generate({src!r})"
        subprocess.run([sys.executable, "-c", code], check=True)
    sizes = [os.path.getsize(os.path.join(src, f)) for f in sorted(os.listdir(src))
             if f.endswith(".safetensors")]  # fmt: skip
    out = os.path.join(work, f"orbax-{dtype}")
    cmd = [sys.executable, tool, "--src", src, "--out", out, "--dtype", dtype, "--overwrite",
           *extra]  # fmt: skip
    t = time.time()
    # wait4 gives this child's own peak: RUSAGE_CHILDREN would also count the generator child.
    proc = subprocess.Popen(cmd)
    _, status, usage = os.wait4(proc.pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"{tool} failed with status {os.waitstatus_to_exitcode(status)}")
    peak = usage.ru_maxrss * 1024  # Linux: KiB
    base = subprocess.run(
        [sys.executable, "-c", "import resource, jax, orbax.checkpoint, "
         "vpgtrans_jax.checkpoint.convert; "
         "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)"],
        check=True, capture_output=True, text=True,
    )  # fmt: skip
    gib = 2**30
    print(f"shards: {[round(s / gib, 3) for s in sizes]} GiB; largest {max(sizes) / gib:.3f} GiB")
    print(
        f"peak RSS of the conversion: {peak / gib:.3f} GiB = {peak / max(sizes):.2f}x the "
        f"largest shard ({time.time() - t:.0f} s); imports alone: {int(base.stdout) / gib:.3f} GiB"
    )
    return {"peak": peak, "largest_shard": max(sizes), "imports": int(base.stdout)}
