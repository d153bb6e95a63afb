"""Input word embeddings of a Hugging Face LLM directory, read lazily from its safetensors.

Two spaces matter for VPGTrans:

- the **prompt space**: where token embeddings and our soft prompt live (``embed_tokens`` rows,
  width ``input_embed_dim``); the VL model's projector writes here.
- the **feature space**: what the first decoder layer receives from a token. It equals the prompt
  space except for OPT-350m style models, whose ``project_in`` (no bias) maps
  ``word_embed_proj_dim`` to ``hidden_size``. The original VPGTrans trains its converter on
  these features.

``LLMEmbeddings`` carries the prompt-space table and, where present, the ``project_in`` kernel so
callers can take either. Supported directories: OPT and LLaMA-family (``llama``, ``mistral``,
``qwen2``) causal LMs, and HF BLIP-2 directories (their ``text_config`` / ``language_model.*``).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from vpgtrans_jax import paths
from vpgtrans_jax.checkpoint.hf import blip2, llms
from vpgtrans_jax.checkpoint.sources import open_hf_weights, read_json
from vpgtrans_jax.data import text
from vpgtrans_jax.errors import CheckpointError
from vpgtrans_jax.models import registry
from vpgtrans_jax.models.registry import LLMConfig


@dataclasses.dataclass(frozen=True)
class LLMEmbeddings:
    """Token embeddings of one LLM.

    Attributes:
      path: the directory read.
      llm_type: the LLM's family name (``models.registry``).
      config: our config of that family, built from the directory's config.
      table: float32[V, E] ``embed_tokens`` rows (prompt space, E = ``config.input_embed_dim``).
      project_in: float32[E, D] kernel of OPT's ``project_in`` (our [in, out] layout) or None.
    """

    path: str
    llm_type: str
    config: LLMConfig
    table: np.ndarray
    project_in: np.ndarray | None

    @property
    def vocab_size(self) -> int:
        return int(self.table.shape[0])

    @property
    def prompt_dim(self) -> int:
        return int(self.table.shape[1])

    @property
    def feature_dim(self) -> int:
        return self.prompt_dim if self.project_in is None else int(self.project_in.shape[1])

    def features(self, ids: np.ndarray) -> np.ndarray:
        """int[N] token ids → float32[N, feature_dim]: rows after ``project_in`` where present."""
        ids = np.asarray(ids)
        if ids.size and (ids.min() < 0 or ids.max() >= self.vocab_size):
            raise ValueError(
                f"{self.path}: token ids must lie in [0, {self.vocab_size}), got range "
                f"[{ids.min()}, {ids.max()}]"
            )
        rows = self.table[ids]
        return rows if self.project_in is None else rows @ self.project_in


def llm_config_of(hf_config: Any, where: str) -> tuple[str, LLMConfig, str]:
    """(family name, our config, tensor key prefix) for an LLM or BLIP-2 ``config.json`` dict."""
    prefix = ""
    if blip2.is_blip2(hf_config):
        hf_config = {"model_type": "opt", **(hf_config.get("text_config") or {})}
        prefix = "language_model."
    cfg = llms.config_from_hf(hf_config, where)
    return registry.family_of(cfg).name, cfg, prefix


def _find_one(keys: list[str], suffix: str, prefix: str, where: str) -> str | None:
    """The one key under ``prefix`` ending in ``suffix`` (None if absent), whatever the wrapper
    (``model.decoder.``, ``decoder.``, ``language_model.model.`` ...)."""
    hits = [k for k in keys if k.startswith(prefix) and k.endswith(suffix)]
    if len(hits) > 1:
        raise CheckpointError(f"{where}: several tensors end with {suffix!r}: {sorted(hits)}")
    return hits[0] if hits else None


def read_input_embeddings(path: str) -> LLMEmbeddings:
    """Reads ``embed_tokens`` (and OPT's ``project_in``) from a HF LLM or BLIP-2 directory.

    Only these tensors are read from disk, so a 7B checkpoint costs one vocabulary-sized table of
    memory. A ``gs://`` directory is read from a local copy (``paths.local_copy``).
    """
    if not paths.isdir(path):
        raise CheckpointError(f"{path}: not a directory (expected a Hugging Face LLM directory)")
    config_path = paths.join(path, "config.json")
    llm_type, cfg, prefix = llm_config_of(read_json(config_path), config_path)
    ckpt = open_hf_weights(path)
    keys = ckpt.keys()
    emb_key = _find_one(keys, "embed_tokens.weight", prefix, path)
    if emb_key is None:
        raise CheckpointError(
            f"{path}: no tensor ending in 'embed_tokens.weight'"
            f"{f' under {prefix!r}' if prefix else ''} (found e.g. {sorted(keys)[:8]})"
        )
    table = np.asarray(ckpt.read(emb_key), dtype=np.float32)
    want = (cfg.vocab_size, cfg.input_embed_dim)
    if table.shape != want:
        raise CheckpointError(
            f"{path}: {emb_key} has shape {table.shape}, config.json implies {want}"
        )
    project_in = None
    if getattr(cfg, "has_projection", False):  # OPT-350m style project_in
        pin_key = emb_key[: -len("embed_tokens.weight")] + "project_in.weight"
        if pin_key not in ckpt:
            raise CheckpointError(
                f"{path}: config has word_embed_proj_dim={cfg.word_embed_proj_dim} != "
                f"hidden_size={cfg.hidden_size} but tensor {pin_key!r} is missing"
            )
        # torch Linear weight is [out, in]; our kernel layout is [in, out].
        project_in = np.asarray(ckpt.read(pin_key), dtype=np.float32).T
    return LLMEmbeddings(path, llm_type, cfg, table, project_in)


def load_tokenizer(path: str) -> Any:
    """The directory's tokenizer via ``transformers.AutoTokenizer`` (offline)."""
    try:
        return text.load_tokenizer(path)
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{path}: cannot load a tokenizer from this directory ({e})") from e
