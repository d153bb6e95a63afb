"""The vision-language LLM: ViT → ln_vision → Q-Former → projector → soft prompt → frozen LLM.

Parameter tree (top level): ``vision`` (frozen EVA ViT), ``ln_vision``, ``query_tokens``,
``qformer`` (these three plus ``projector`` form the trainable VPG side), ``projector`` and ``llm``
(frozen decoder).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from vpgtrans_jax import sharding
from vpgtrans_jax.models import registry
from vpgtrans_jax.models.configs import from_json_fields
from vpgtrans_jax.models.decoder import check_token_ids
from vpgtrans_jax.models.qformer import QFormer, QFormerConfig
from vpgtrans_jax.models.registry import LLMConfig
from vpgtrans_jax.models.vit import VisionConfig, VisionTransformer
from vpgtrans_jax.nn import layers
from vpgtrans_jax.nn.kv_cache import KVCache
from vpgtrans_jax.nn.loss import IGNORE_INDEX, chunked_cross_entropy, cross_entropy

__all__ = ["IGNORE_INDEX", "VLConfig", "VLModel", "as_int32", "cross_entropy"]


def as_int32(x: Any) -> Any:
    """Integer inputs (masks, offsets, labels) as int32 at the model's boundary: numpy int64
    would make every ``jnp.ones(..., dtype=mask.dtype)`` warn about truncation."""
    return None if x is None else jnp.asarray(x, jnp.int32)


@dataclasses.dataclass(frozen=True)
class VLConfig:
    """Whole-model configuration.

    Attributes:
      vision, qformer, llm: tower configs (each carries its own dtype / scan / remat knobs).
      num_query_tokens: soft-prompt length (32 in BLIP-2).
      ln_vision_eps: eps of ``ln_vision`` (LAVIS 1e-5; HF's ``post_layernorm`` uses the ViT's 1e-6).
    ``ln_vision``, ``query_tokens`` and the projector use the Q-Former's dtypes (trained with it).
    """

    vision: VisionConfig
    qformer: QFormerConfig
    llm: LLMConfig
    num_query_tokens: int = 32
    ln_vision_eps: float = 1e-5

    @property
    def llm_type(self) -> str:
        """The LLM's family name (``models.registry``)."""
        return registry.family_of(self.llm).name

    def replace(self, **kw: Any) -> VLConfig:
        return dataclasses.replace(self, **kw)

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable form (``from_dict`` inverts it)."""
        return {
            "vision": dataclasses.asdict(self.vision),
            "qformer": dataclasses.asdict(self.qformer),
            "llm": dataclasses.asdict(self.llm),
            "llm_type": self.llm_type,
            "num_query_tokens": self.num_query_tokens,
            "ln_vision_eps": self.ln_vision_eps,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> VLConfig:
        llm_cls = registry.family(d.get("llm_type")).config_cls
        return cls(
            vision=from_json_fields(VisionConfig, d["vision"], "vision"),
            qformer=from_json_fields(QFormerConfig, d["qformer"], "qformer"),
            llm=from_json_fields(llm_cls, d["llm"], "llm"),
            num_query_tokens=int(d.get("num_query_tokens", 32)),
            ln_vision_eps=float(d.get("ln_vision_eps", 1e-5)),
        )

    def with_knobs(
        self,
        *,
        vision: dict[str, Any] | None = None,
        qformer: dict[str, Any] | None = None,
        llm: dict[str, Any] | None = None,
    ) -> VLConfig:
        """Same architecture, other run knobs (dtype, param_dtype, scan_layers, remat_policy)."""
        return dataclasses.replace(
            self,
            vision=dataclasses.replace(self.vision, **(vision or {})),
            qformer=dataclasses.replace(self.qformer, **(qformer or {})),
            llm=dataclasses.replace(self.llm, **(llm or {})),
        )


class VLModel(nnx.Module):
    """BLIP-2 style VL-LLM with a decoder-only LLM."""

    def __init__(self, cfg: VLConfig, *, rngs: nnx.Rngs):
        self.config = cfg
        vpg_dtype = jnp.dtype(cfg.qformer.dtype)
        vpg_param_dtype = jnp.dtype(cfg.qformer.param_dtype)
        if cfg.qformer.encoder_hidden_size != cfg.vision.hidden_size:
            raise ValueError(
                f"qformer.encoder_hidden_size={cfg.qformer.encoder_hidden_size} must equal "
                f"vision.hidden_size={cfg.vision.hidden_size}"
            )
        self.vision = VisionTransformer(cfg.vision, rngs=rngs)
        self.ln_vision = layers.LayerNorm(
            cfg.vision.hidden_size,
            eps=cfg.ln_vision_eps,
            dtype=vpg_dtype,
            param_dtype=vpg_param_dtype,
            rngs=rngs,
        )
        self.query_tokens = layers.make_param(
            rngs,
            layers.default_kernel_init,
            (1, cfg.num_query_tokens, cfg.qformer.hidden_size),
            vpg_param_dtype,
            (None, None, "embed"),
        )
        self.qformer = QFormer(cfg.qformer, rngs=rngs)
        self.projector = layers.Dense(
            cfg.qformer.hidden_size,
            cfg.llm.input_embed_dim,
            axes=(None, "embed"),
            dtype=vpg_dtype,
            param_dtype=vpg_param_dtype,
            rngs=rngs,
        )
        self.llm = registry.family_of(cfg.llm).model_cls(cfg.llm, rngs=rngs)

    # -- pieces ------------------------------------------------------------------------------

    def image_features(self, pixel_values: jax.Array) -> jax.Array:
        """float[B, H, W, 3] → ln_vision(ViT(x)): float[B, 1 + N, Dv]."""
        with jax.named_scope("vision"):  # tower scopes name the ops in HLO (precision tests)
            feats = self.vision(pixel_values)
        return self.ln_vision(feats)

    def soft_prompt(self, pixel_values: jax.Array) -> jax.Array:
        """float[B, H, W, 3] → projected query outputs float[B, Q, E] in the LLM's dtype."""
        feats = self.image_features(pixel_values)
        b = feats.shape[0]
        queries = jnp.broadcast_to(
            self.query_tokens[...], (b, *self.query_tokens.shape[1:])
        ).astype(jnp.dtype(self.config.qformer.dtype))
        q = self.qformer(queries, feats)
        prompt = self.projector(q)
        prompt = sharding.constrain(prompt, sharding.HIDDEN)
        return prompt.astype(jnp.dtype(self.config.llm.dtype))

    def prepend_prompt(
        self, prompt: jax.Array, input_ids: jax.Array, attention_mask: jax.Array
    ) -> tuple[jax.Array, jax.Array]:
        """[soft prompt ; token embeddings] and the matching mask: float[B, Q+T, E], int[B, Q+T]."""
        text = self.llm.embed(input_ids).astype(prompt.dtype)
        embeds = jnp.concatenate([prompt, text], axis=1)
        q_mask = jnp.ones(prompt.shape[:2], dtype=attention_mask.dtype)
        return embeds, jnp.concatenate([q_mask, attention_mask], axis=1)

    def insert_prompt(
        self,
        prompt: jax.Array,
        input_ids: jax.Array,
        attention_mask: jax.Array,
        image_offsets: jax.Array,
    ) -> tuple[jax.Array, jax.Array]:
        """[text[:k] ; soft prompt ; text[k:]] per row (k = ``image_offsets[b]``), and its mask.

        The MiniGPT-4 / VL-Vicuna template puts the image inside the prompt
        (``###Human: <Img><ImageHere></Img> ...``). Returns float[B, Q+T, E], int[B, Q+T].
        """
        q, t = prompt.shape[1], input_ids.shape[1]
        text = self.llm.embed(input_ids).astype(prompt.dtype)
        pos = jnp.arange(q + t)[None, :]
        k = image_offsets.astype(jnp.int32)[:, None]
        is_image = (pos >= k) & (pos < k + q)
        text_idx = jnp.clip(jnp.where(pos < k, pos, pos - q), 0, t - 1)
        image_idx = jnp.clip(pos - k, 0, q - 1)
        take = lambda a, idx: jnp.take_along_axis(a, idx[..., None], axis=1)
        embeds = jnp.where(is_image[..., None], take(prompt, image_idx), take(text, text_idx))
        mask = jnp.where(is_image, 1, jnp.take_along_axis(attention_mask, text_idx, axis=1))
        return embeds, mask.astype(attention_mask.dtype)

    def text_positions(self, t: int, image_offsets: jax.Array | None, batch: int) -> jax.Array:
        """int[B, T]: where text token ``t`` sits in the LLM sequence."""
        q = self.config.num_query_tokens
        idx = jnp.arange(t)[None, :]
        if image_offsets is None:
            return jnp.broadcast_to(idx + q, (batch, t))
        return idx + q * (idx >= image_offsets.astype(jnp.int32)[:, None])

    def prompt_embeds(
        self,
        pixel_values: jax.Array,
        input_ids: jax.Array,
        attention_mask: jax.Array,
        image_offsets: jax.Array | None = None,
    ) -> tuple[jax.Array, jax.Array]:
        """LLM inputs float[B, Q + T, E] and mask int[B, Q + T]: the soft prompt first, or
        inserted after ``image_offsets[b]`` text columns."""
        prompt = self.soft_prompt(pixel_values)
        if image_offsets is None:
            return self.prepend_prompt(prompt, input_ids, attention_mask)
        return self.insert_prompt(prompt, input_ids, attention_mask, image_offsets)

    def hidden_states(
        self,
        pixel_values: jax.Array,
        input_ids: jax.Array,
        attention_mask: jax.Array | None = None,
        image_offsets: jax.Array | None = None,
    ) -> jax.Array:
        """Final LLM hidden states over [soft prompt ; text] (or the prompt inserted at
        ``image_offsets``): float[B, Q + T, E]."""
        if attention_mask is None:
            attention_mask = jnp.ones(input_ids.shape, jnp.int32)
        attention_mask, image_offsets = as_int32(attention_mask), as_int32(image_offsets)
        embeds, mask = self.prompt_embeds(pixel_values, input_ids, attention_mask, image_offsets)
        with jax.named_scope("llm"):
            hidden, _ = self.llm.hidden_states(embeds, mask)
        return hidden

    # -- public API ----------------------------------------------------------------------------

    def __call__(
        self,
        pixel_values: jax.Array,
        input_ids: jax.Array,
        attention_mask: jax.Array | None = None,
        image_offsets: jax.Array | None = None,
    ) -> jax.Array:
        """Text logits.

        Args:
          pixel_values: float32[B, H, W, 3], normalised.
          input_ids: int[B, T] text tokens (no image placeholders).
          attention_mask: int[B, T] (1 = real token); defaults to all ones.
          image_offsets: optional int[B]; the soft prompt goes after that many text tokens
            (default: before the text).

        Returns:
          float[B, T, vocab]: the LLM's logits at the text positions.
        """
        hidden = self.hidden_states(pixel_values, input_ids, attention_mask, image_offsets)
        if image_offsets is not None:
            pos = self.text_positions(input_ids.shape[1], image_offsets, input_ids.shape[0])
            return self.llm.logits(jnp.take_along_axis(hidden, pos[..., None], axis=1))
        q = self.config.num_query_tokens
        return self.llm.logits(hidden[:, q:])

    # -- incremental decoding (driven by vpgtrans_jax.generation) ------------------------------

    def prefill(
        self,
        pixel_values: jax.Array,
        input_ids: jax.Array,
        attention_mask: jax.Array,
        max_new_tokens: int,
        image_offsets: jax.Array | None = None,
    ) -> tuple[jax.Array, KVCache, jax.Array, jax.Array]:
        """Runs [soft prompt ; left-padded text] into a fresh KV cache with room for new tokens.

        Positions are Hugging Face ``generate``'s for both LLM types: ``cumsum(mask) - 1`` (so
        padding shifts nothing), the n-th new token of a row with ``P_b`` real prompt slots
        sits at position ``P_b + n``.

        Args:
          pixel_values: float[B, H, W, 3]; input_ids, attention_mask: int[B, T], left-padded.
          max_new_tokens: cache slots reserved after the prompt.
          image_offsets: optional int[B]: the soft prompt goes after that many text columns
            (padding included) instead of first, as in the stage-3 ``<ImageHere>`` template.

        Returns:
          (float32[B, V] next-token logits, the cache (index Q + T), int32[B, Q + T + max_new]
          mask over every cache slot, int32[B] position of the first new token).
        """
        attention_mask, image_offsets = as_int32(attention_mask), as_int32(image_offsets)
        embeds, mask = self.prompt_embeds(pixel_values, input_ids, attention_mask, image_offsets)
        b, p = mask.shape
        # New slots are marked valid up front: causality hides them until they are written.
        full_mask = jnp.concatenate(
            [mask.astype(jnp.int32), jnp.ones((b, max_new_tokens), jnp.int32)], axis=1
        )
        positions = jnp.maximum(jnp.cumsum(full_mask, axis=1) - 1, 0)
        cache = self.llm.init_cache(b, p + max_new_tokens)
        hidden, cache = self.llm.hidden_states(
            embeds, full_mask, positions=positions[:, :p], cache=cache
        )
        logits = self.llm.logits(hidden[:, -1:])[:, 0].astype(jnp.float32)
        return logits, cache, full_mask, positions[:, p]

    def decode_step(
        self, tokens: jax.Array, cache: KVCache, full_mask: jax.Array, positions: jax.Array
    ) -> tuple[jax.Array, KVCache]:
        """Feeds int[B] tokens at ``cache.index`` with int[B] positions.

        Returns (float32[B, V] next-token logits, the cache advanced by one).
        """
        embeds = self.llm.embed(tokens[:, None])
        hidden, cache = self.llm.hidden_states(
            embeds, full_mask, positions=positions[:, None], cache=cache
        )
        return self.llm.logits(hidden)[:, 0].astype(jnp.float32), cache

    def loss(
        self,
        pixel_values: jax.Array,
        input_ids: jax.Array,
        attention_mask: jax.Array,
        labels: jax.Array,
        prompt_lengths: jax.Array | None = None,
        image_offsets: jax.Array | None = None,
        *,
        logits_chunk: int = 0,
    ) -> tuple[jax.Array, dict[str, jax.Array]]:
        """Mean next-token cross-entropy over the text tokens (LAVIS semantics).

        Text token ``t`` is predicted from position ``Q + t - 1``: the first text token is predicted
        from the last soft-prompt position, as in LAVIS/VPGTrans where the query targets are -100
        and the LLM shifts internally.

        Args:
          labels: int[B, T]; ``-100`` is ignored (padding, and the prompt when masked by the data).
          prompt_lengths: optional int[B]; the first ``prompt_lengths[b]`` text tokens are also
            ignored (a text prompt prefix such as "a photo of").
          image_offsets: optional int[B]; soft prompt after that many text tokens (stage 3).
          logits_chunk: > 0 computes the loss that many text positions at a time
            (``nn.loss.chunked_cross_entropy``), so the float32 [B, T, V] logits never exist;
            0 computes them whole. Same loss and gradients up to float32 rounding.

        Returns:
          (scalar loss, {"num_tokens": int32 scalar, "nll_sum": float32 scalar}).
        """
        check_token_ids(labels, self.config.llm.vocab_size, "labels", allowed=(IGNORE_INDEX,))
        labels, image_offsets = as_int32(labels), as_int32(image_offsets)
        hidden = self.hidden_states(pixel_values, input_ids, attention_mask, image_offsets)
        q = self.config.num_query_tokens
        b, t = input_ids.shape
        if image_offsets is None:
            predicting = hidden[:, q - 1 : q + t - 1]
        else:
            src = self.text_positions(t, image_offsets, b) - 1  # predicting position
            labels = jnp.where(src >= 0, labels, IGNORE_INDEX)
            predicting = jnp.take_along_axis(hidden, jnp.maximum(src, 0)[..., None], axis=1)
        if prompt_lengths is not None:
            keep = jnp.arange(t)[None, :] >= prompt_lengths[:, None]
            labels = jnp.where(keep, labels, IGNORE_INDEX)
        with jax.named_scope("llm"):
            if logits_chunk > 0:
                return chunked_cross_entropy(predicting, labels, self.llm.logits, logits_chunk)
            return cross_entropy(self.llm.logits(predicting), labels)
