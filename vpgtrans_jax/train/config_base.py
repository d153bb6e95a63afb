"""The training config schema: every field with its default, shared by all ``configs/*.py``.

Stage configs call ``base_config()`` and override; ``config_flags`` locks the result, so an
unknown ``--config.x.y=...`` override is an error. ``validate`` checks required fields and values
and names the offending key.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import ml_collections

from vpgtrans_jax.data.processors import MAX_IMAGE_PIXELS
from vpgtrans_jax.errors import ConfigError
from vpgtrans_jax.models import registry
from vpgtrans_jax.models.opt import OPTConfig
from vpgtrans_jax.models.parts import PARTS, RUNTIME_FIELDS
from vpgtrans_jax.models.qformer import QFormerConfig
from vpgtrans_jax.models.vit import VisionConfig
from vpgtrans_jax.nn.attention import IMPLEMENTATIONS

KNOBS = RUNTIME_FIELDS
STAGES = ("warmup", "finetune", "instruct")
REQUIRED = "<required>"  # placeholder for paths a real-size config must be given
# Stands for data.synthetic_dir in tiny configs' paths; vpgtrans_jax.tiny.prepare resolves it.
SYNTHETIC_PLACEHOLDER = "{synthetic_dir}"


def arch_dict(cls: type, **overrides) -> ml_collections.ConfigDict:
    """A tower's architecture fields (no run knobs) as a ConfigDict, defaults from the dataclass."""
    fields = {
        f.name: f.default
        for f in dataclasses.fields(cls)
        if f.name not in KNOBS and f.default is not dataclasses.MISSING
    }
    unknown = sorted(set(overrides) - {f.name for f in dataclasses.fields(cls)})
    if unknown:
        raise ValueError(f"unknown {cls.__name__} fields {unknown}")
    fields.update(overrides)
    return ml_collections.ConfigDict(fields, type_safe=False)


def tower_knobs(
    dtype: str = "float32",
    param_dtype: str = "float32",
    scan_layers: bool = False,
    remat_policy: str = "none",
    attention_impl: str = "auto",
) -> ml_collections.ConfigDict:
    """A tower's run knobs. ``attention_impl="auto"`` picks the fused kernel of the platform
    (cuDNN on GPU, Pallas on TPU) and the einsum path on CPU (``nn.attention``)."""
    return ml_collections.ConfigDict(
        dict(
            dtype=dtype,
            param_dtype=param_dtype,
            scan_layers=scan_layers,
            remat_policy=remat_policy,
            attention_impl=attention_impl,
        )
    )


def base_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.stage = "warmup"
    c.seed = 0

    # ---- model ------------------------------------------------------------------------------
    c.model = ml_collections.ConfigDict()
    # "pretrained": every tower from `path` (anything vpgtrans_jax.load accepts: a HF BLIP-2
    # directory or a vpgtrans-jax model directory). "random": towers built from `arch` (tiny runs).
    c.model.init = "pretrained"
    c.model.path = REQUIRED
    # Optional: the trainable VPG side (ln_vision / query_tokens / qformer / projector) from a
    # previous stage's export or scripts/merge_projector.py output; overrides what `path` gave.
    c.model.vpg_init = ""
    c.model.llm_type = "opt"  # for init="random": a family of vpgtrans_jax.models.registry
    # init="random" only: the LLM tower from this checkpoint instead (a model directory holding an
    # LLM, a HF LLM or a HF BLIP-2 directory); the rest stays randomly initialised.
    c.model.llm_init = ""
    # init="random" tiny configs: vpgtrans_jax.tiny.prepare pretrains the tiny LLM as a causal LM
    # on the synthetic captions for this many steps (cached) and sets llm_init to it, so that the
    # frozen LLM is a language model, as in real runs.
    c.model.tiny_llm_steps = 0
    # What that tiny LLM reads: "captions", or "chat" (the captions and the synthetic
    # instruction conversations in the vicuna_v0 chat format, for the tiny stage-3 chat model).
    c.model.tiny_llm_corpus = "captions"
    c.model.arch = ml_collections.ConfigDict(
        dict(
            vision=arch_dict(VisionConfig),
            qformer=arch_dict(QFormerConfig),
            llm=arch_dict(
                OPTConfig,
                vocab_size=50272,
                hidden_size=2560,
                num_layers=32,
                num_heads=32,
                ffn_dim=10240,
            ),
            num_query_tokens=32,
            ln_vision_eps=1e-5,
        )
    )
    # Frozen towers in bf16; the trained VPG side (Q-Former dtypes also apply to ln_vision,
    # query tokens and projector) and the optimiser in fp32.
    c.model.vision = tower_knobs("bfloat16", "bfloat16")
    c.model.qformer = tower_knobs("float32", "float32")
    c.model.llm = tower_knobs("bfloat16", "bfloat16")
    c.trainable = ("projector",)

    # ---- data -------------------------------------------------------------------------------
    c.data = ml_collections.ConfigDict()
    c.data.tokenizer = REQUIRED  # local HF tokenizer directory of the LLM
    # name -> {kind, weight, args}; kinds of vpgtrans_jax.data.registry.make_source.
    c.data.sources = ml_collections.ConfigDict(type_safe=False)
    c.data.synthetic_dir = ""  # tiny configs: generated here on first use when absent
    c.data.synthetic_images = 0
    c.data.image_size = 224
    c.data.max_len = 32
    # The prompt before each target (loss-masked). A template with "{}" (stage 3) gets each
    # sample's instruction there: the sample's own `prompt`/`instruction` field, else one of
    # `instructions` (picked per sample, deterministically per seed). A plain prompt is replaced
    # by a sample's own prompt. docs/data.md, "Per-sample prompts".
    c.data.prompt = ""
    c.data.instructions = ()
    c.data.text_field = "text"
    c.data.text_processor = "caption"
    c.data.end = "\n"
    c.data.flip_prob = 0.5
    c.data.min_scale = 0.5
    c.data.num_workers = 0
    c.data.max_bad_fraction = 0.05
    # Images with more pixels are refused from their header, before decoding (a bad sample):
    # a small PNG can claim 13000 x 13000 and take gigabytes to decode.
    c.data.max_image_pixels = MAX_IMAGE_PIXELS

    # ---- optimisation -----------------------------------------------------------------------
    c.batch_size = 1728  # global (all hosts, all micro-batches)
    c.accum_steps = 1
    # The loss runs over this many text positions at a time (nn.loss.chunked_cross_entropy), so
    # the float32 [B, T, vocab] logits never exist; 0 = all at once. Same loss up to rounding.
    c.loss_chunk = 8
    c.num_steps = 0  # > 0 wins over num_epochs
    c.num_epochs = 1.0
    c.optim = ml_collections.ConfigDict()
    c.optim.schedule = "warmup_cosine"
    c.optim.init_lr = 1e-4
    c.optim.min_lr = 5e-5
    c.optim.warmup_lr = 1e-6
    c.optim.warmup_steps = 1000
    c.optim.weight_decay = 0.05
    c.optim.b1 = 0.9
    c.optim.b2 = 0.999
    c.optim.eps = 1e-8
    c.optim.grad_clip_norm = 0.0  # 0 = off
    c.optim.lr_multipliers = ml_collections.ConfigDict(type_safe=False)  # module -> factor
    c.max_bad_steps = 20  # consecutive non-finite steps before stopping

    # ---- parallelism ------------------------------------------------------------------------
    c.mesh_shape = (-1, 1, 1)  # (data, fsdp, tensor); one -1 takes the remaining devices
    c.sharding_rules = ()  # () = vpgtrans_jax.sharding.DEFAULT_RULES

    # ---- bookkeeping ------------------------------------------------------------------------
    c.log_every = 10
    c.checkpoint_every = 1000
    c.keep_checkpoints = 3
    c.async_checkpoint = True
    c.export_final = True  # write <workdir>/export: the trained parts, loadable as vpg_init
    # The workdir remembers the config that made it (<workdir>/config.json) and refuses a rerun
    # whose config changes the training. True: move that earlier run aside (never deleted) into
    # <workdir>/earlier_runs/ and start this one at step 0. train/workdir.py.
    c.force_new_run = False
    # > 0: also export the model every this many epochs to <workdir>/exports/epoch_<k> (k = epochs
    # done), so that each epoch can be evaluated (the transfer's speed-up curves).
    c.export_every_epochs = 0
    # The chat template the exported model answers in (vpgtrans_jax.chat.conversation's names),
    # recorded in the export's manifest (info.chat_template) so the chat picks it; "" = none
    # (stage-1/2 models: the chat uses BLIP-2's "Question: {} Answer:").
    c.chat_template = ""
    return c


# Every numeric field and its valid range: (key, type, low, high, low_open, high_open); None =
# unbounded. A value outside, or NaN/inf, is an error naming the field.
_NUMBERS: tuple[tuple[str, type, float | None, float | None, bool, bool], ...] = (
    ("seed", int, 0, None, False, False),
    ("batch_size", int, 1, None, False, False),
    ("accum_steps", int, 1, None, False, False),
    ("loss_chunk", int, 0, None, False, False),
    ("num_steps", int, 0, None, False, False),
    ("num_epochs", float, 0, None, False, False),
    ("max_bad_steps", int, 1, None, False, False),
    ("log_every", int, 1, None, False, False),
    ("checkpoint_every", int, 0, None, False, False),
    ("keep_checkpoints", int, 1, None, False, False),
    ("optim.init_lr", float, 0, None, True, False),
    ("optim.min_lr", float, 0, None, False, False),
    ("optim.warmup_lr", float, 0, None, False, False),
    ("optim.warmup_steps", int, 0, None, False, False),
    ("optim.weight_decay", float, 0, None, False, False),
    ("optim.b1", float, 0, 1, False, True),
    ("optim.b2", float, 0, 1, False, True),
    ("optim.eps", float, 0, None, True, False),
    ("optim.grad_clip_norm", float, 0, None, False, False),
    ("data.image_size", int, 1, None, False, False),
    ("data.max_len", int, 1, None, False, False),
    ("data.flip_prob", float, 0, 1, False, False),
    ("data.min_scale", float, 0, 1, True, False),
    ("data.num_workers", int, 0, None, False, False),
    ("data.max_bad_fraction", float, 0, 1, False, True),
    ("data.max_image_pixels", int, 1, None, False, False),
    ("data.synthetic_images", int, 0, None, False, False),
    ("model.tiny_llm_steps", int, 0, None, False, False),
)


def _get(c: ml_collections.ConfigDict, key: str) -> Any:
    for part in key.split("."):
        c = c[part]
    return c


def check_number(
    key: str,
    value: Any,
    kind: type,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
    high_open: bool = False,
) -> None:
    """Raises ConfigError naming ``config.<key>`` unless ``value`` is a finite ``kind`` in range."""
    ok_type = (int,) if kind is int else (int, float)
    if isinstance(value, bool) or not isinstance(value, ok_type):
        what = "an integer" if kind is int else "a number"
        raise ConfigError(f"config.{key}: must be {what}, got {value!r}")
    bounds = []
    if low is not None:
        bounds.append(f"{'>' if low_open else '>='} {low}")
    if high is not None:
        bounds.append(f"{'<' if high_open else '<='} {high}")
    bad = not math.isfinite(value)
    bad |= low is not None and (value <= low if low_open else value < low)
    bad |= high is not None and (value >= high if high_open else value > high)
    if bad:
        rule = " and ".join((["finite"] if kind is float else []) + bounds)
        raise ConfigError(f"config.{key}: must be {rule}, got {value!r}")


def validate(c: ml_collections.ConfigDict, *, prepared: bool = True) -> None:
    """Raises ConfigError (a ValueError) naming the first bad field.

    ``prepared=False`` skips the checks that need ``vpgtrans_jax.tiny.prepare`` to have run (it
    validates with it before generating anything).
    """

    def bad(key: str, msg: str):
        raise ConfigError(f"config.{key}: {msg}")

    for key, *rule in _NUMBERS:
        check_number(key, _get(c, key), *rule)
    if not isinstance(c.force_new_run, bool):
        bad("force_new_run", f"must be True or False, got {c.force_new_run!r}")
    if c.stage not in STAGES:
        bad("stage", f"must be one of {STAGES}, got {c.stage!r}")
    if c.model.tiny_llm_corpus not in ("captions", "chat"):
        bad(
            "model.tiny_llm_corpus",
            f"must be 'captions' or 'chat', got {c.model.tiny_llm_corpus!r}",
        )
    if not isinstance(c.chat_template, str):
        bad("chat_template", f"must be a template name or '', got {c.chat_template!r}")
    if c.model.init not in ("pretrained", "random"):
        bad("model.init", f"must be 'pretrained' or 'random', got {c.model.init!r}")
    if c.model.init == "pretrained" and c.model.path in ("", REQUIRED):
        bad(
            "model.path",
            "is required with model.init='pretrained' (a HF BLIP-2 or vpgtrans-jax "
            "model directory); pass --config.model.path=DIR",
        )
    if c.model.llm_type not in registry.FAMILIES:
        bad(
            "model.llm_type",
            f"must be one of {sorted(registry.FAMILIES)}, got {c.model.llm_type!r}",
        )
    if c.data.tokenizer in ("", REQUIRED) and not c.data.synthetic_dir:
        bad("data.tokenizer", "is required: a local Hugging Face tokenizer directory of the LLM")
    if not c.data.sources and not c.data.synthetic_dir:
        bad("data.sources", "is empty: name at least one source {kind, weight, args}")
    for name, src in c.data.sources.items():
        for key in ("kind", "weight", "args"):
            if key not in src:
                bad(f"data.sources.{name}", f"needs a {key!r} entry")
        check_number(f"data.sources.{name}.weight", src["weight"], float, 0, None, True)
        for arg, value in src["args"].items():
            if value == REQUIRED:
                bad(f"data.sources.{name}.args.{arg}", "is required (a path on disk)")
    for module, factor in c.optim.lr_multipliers.items():
        check_number(f"optim.lr_multipliers.{module}", factor, float, 0)
    if isinstance(c.data.instructions, str) or not all(
        isinstance(x, str) and x.strip() for x in c.data.instructions
    ):
        bad(
            "data.instructions", f"must be a list of non-empty strings, got {c.data.instructions!r}"
        )
    for tower in ("vision", "qformer", "llm"):
        impl = c.model[tower].attention_impl
        if impl not in IMPLEMENTATIONS:
            bad(f"model.{tower}.attention_impl", f"must be one of {IMPLEMENTATIONS}, got {impl!r}")
    unknown = sorted(set(c.trainable) - set(PARTS))
    if unknown or not c.trainable:
        bad("trainable", f"must be a non-empty subset of {PARTS}, got {c.trainable}")
    if c.batch_size < 1 or c.accum_steps < 1 or c.batch_size % c.accum_steps:
        bad(
            "batch_size",
            f"{c.batch_size} must be a positive multiple of accum_steps={c.accum_steps}",
        )
    if c.num_steps <= 0 and c.num_epochs <= 0:
        bad("num_steps", "set num_steps > 0 or num_epochs > 0")
    if c.num_steps > 0:
        check_warmup(c, c.num_steps)
    if not isinstance(c.export_every_epochs, int) or c.export_every_epochs < 0:
        bad("export_every_epochs", f"must be an integer >= 0, got {c.export_every_epochs!r}")
    if c.optim.schedule not in ("constant", "warmup_cosine"):
        bad("optim.schedule", f"must be 'constant' or 'warmup_cosine', got {c.optim.schedule!r}")
    shape = tuple(c.mesh_shape)
    if (
        len(shape) != 3
        or not all(isinstance(n, int) and (n == -1 or n >= 1) for n in shape)
        or shape.count(-1) > 1
    ):
        bad(
            "mesh_shape",
            f"must be 3 sizes (data, fsdp, tensor), each >= 1 or one -1, got {c.mesh_shape}",
        )
    for tower in ("vision", "qformer", "llm"):
        knobs = c.model[tower]
        for dt in ("dtype", "param_dtype"):
            if knobs[dt] not in ("float32", "bfloat16", "float16"):
                bad(f"model.{tower}.{dt}", f"must be float32/bfloat16/float16, got {knobs[dt]!r}")
    if not prepared:
        return
    if c.model.init == "random" and c.model.tiny_llm_steps > 0 and not c.model.llm_init:
        bad(
            "model.tiny_llm_steps",
            "needs the tiny LLM pretrained first: call vpgtrans_jax.tiny.prepare(config) before "
            "train() (scripts/train.py does)",
        )
    unresolved = [
        key
        for key, value in [("data.tokenizer", c.data.tokenizer)]
        + [
            (f"data.sources.{name}.args.{arg}", v)
            for name, src in c.data.sources.items()
            for arg, v in src["args"].items()
        ]
        if SYNTHETIC_PLACEHOLDER in str(value)
    ]
    if unresolved:
        bad(
            unresolved[0],
            f"refers to {SYNTHETIC_PLACEHOLDER}: call vpgtrans_jax.tiny.prepare(config) before "
            "train() (scripts/train.py does)",
        )


def check_warmup(c: ml_collections.ConfigDict, steps: int) -> None:
    """``optim.warmup_steps`` must fit in the run's ``steps`` (known once the data is counted)."""
    if c.optim.warmup_steps > steps:
        raise ConfigError(
            f"config.optim.warmup_steps: {c.optim.warmup_steps} is more than the run's {steps} "
            "steps; lower it or train longer"
        )
