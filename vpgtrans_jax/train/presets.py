"""Building blocks that stage configs share: tiny offline models, dataset specs, stage recipes."""

from __future__ import annotations

import ml_collections

from vpgtrans_jax.models.llama import LlamaConfig
from vpgtrans_jax.models.opt import OPTConfig
from vpgtrans_jax.models.parts import VPG_PARTS
from vpgtrans_jax.models.qformer import QFormerConfig
from vpgtrans_jax.models.vit import VisionConfig
from vpgtrans_jax.train.config_base import REQUIRED, SYNTHETIC_PLACEHOLDER, arch_dict, tower_knobs

TINY_SYNTHETIC_DIR = "~/.cache/vpgtrans-jax/synthetic-v1-512-64px"
# The tiny LLM of each family (a family without an entry has no offline tiny runs).
TINY_LLM = {
    "opt": (OPTConfig, dict(vocab_size=512, hidden_size=64, num_layers=2, num_heads=4,
                            ffn_dim=128, max_position_embeddings=128, word_embed_proj_dim=64)),
    "llama": (LlamaConfig, dict(vocab_size=512, hidden_size=64, num_layers=2, num_heads=4,
                                num_kv_heads=2, intermediate_size=128,
                                max_position_embeddings=128)),
}  # fmt: skip


def source(kind: str, weight: float, **args) -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict(
        {"kind": kind, "weight": weight, "args": args}, type_safe=False
    )


# ---- tiny offline runs -------------------------------------------------------------------------


def tiny(c: ml_collections.ConfigDict, llm_type: str = "opt") -> ml_collections.ConfigDict:
    """Random-init tiny towers on the synthetic dataset (generated on first use); fp32 on CPU."""
    c.model.init = "random"
    c.model.path = ""
    c.model.llm_type = llm_type
    c.model.arch.vision = arch_dict(
        VisionConfig,
        image_size=64,
        patch_size=8,
        hidden_size=64,
        num_layers=2,
        num_heads=4,
        mlp_dim=128,
    )
    c.model.arch.qformer = arch_dict(
        QFormerConfig,
        hidden_size=64,
        num_layers=2,
        num_heads=4,
        intermediate_size=128,
        encoder_hidden_size=64,
        cross_attention_frequency=2,
    )
    llm_cls, llm_fields = TINY_LLM[llm_type]
    c.model.arch.llm = arch_dict(llm_cls, **llm_fields)
    c.model.arch.num_query_tokens = 8
    c.model.tiny_llm_steps = 300
    for tower in ("vision", "qformer", "llm"):
        c.model[tower] = tower_knobs("float32", "float32")
    c.data.synthetic_dir = TINY_SYNTHETIC_DIR
    c.data.synthetic_images = 512
    c.data.tokenizer = f"{SYNTHETIC_PLACEHOLDER}/tokenizer"
    c.data.image_size = 64
    c.data.flip_prob = 0.0  # left/right words in the synthetic captions must stay true
    c.data.num_workers = 0
    c.batch_size = 16
    c.accum_steps = 1
    c.log_every = 5
    c.checkpoint_every = 20
    c.async_checkpoint = False
    return c


def tiny_caption_sources() -> ml_collections.ConfigDict:
    d = ml_collections.ConfigDict(type_safe=False)
    d.synthetic_captions = source(
        "lavis_caption",
        1.0,
        ann_paths=f"{SYNTHETIC_PLACEHOLDER}/annotations/caption_train.json",
        image_root=f"{SYNTHETIC_PLACEHOLDER}/images",
    )
    return d


# ---- real datasets (paths are required fields) --------------------------------------------------


def coco_captions(weight: float) -> ml_collections.ConfigDict:
    return source("lavis_caption", weight, ann_paths=REQUIRED, image_root=REQUIRED)


def sbu_captions(weight: float) -> ml_collections.ConfigDict:
    return source("webdataset", weight, shards=REQUIRED, caption_field="caption")


def vg_captions(weight: float) -> ml_collections.ConfigDict:
    return source("lavis_caption", weight, ann_paths=REQUIRED, image_root=REQUIRED)


def laion_coco(weight: float) -> ml_collections.ConfigDict:
    return source("webdataset", weight, shards=REQUIRED, caption_field="caption")


def cc_sbu_align(weight: float = 1.0) -> ml_collections.ConfigDict:
    return source("cc_sbu_align", weight, root=REQUIRED)


# ---- stage recipes (VPGTrans paper / original code) ----------------------------------------------


def real_warmup(c: ml_collections.ConfigDict, llm_type: str) -> ml_collections.ConfigDict:
    """Stage 1 on the original data (COCO + SBU captions), global batch 1728."""
    warmup_stage(c)
    c.model.llm_type = llm_type
    c.data.sources = {"coco": coco_captions(1.0), "sbu": sbu_captions(1.0)}
    c.batch_size = 1728
    c.checkpoint_every = 1000
    return c


def real_finetune(c: ml_collections.ConfigDict, llm_type: str) -> ml_collections.ConfigDict:
    """Stage 2 on the original mix (COCO 0.1 / VG 0.2 / LAION-COCO 0.7), 50k steps of 1728."""
    finetune_stage(c)
    c.model.llm_type = llm_type
    c.data.sources = {
        "coco": coco_captions(0.1),
        "vg": vg_captions(0.2),
        "laion_coco": laion_coco(0.7),
    }
    c.batch_size = 1728
    c.num_steps = 50000
    c.checkpoint_every = 2000
    return c


def warmup_stage(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """Stage 1: projector only, constant LR 5x the stage-2 LR (5e-4), one epoch."""
    c.stage = "warmup"
    c.trainable = ("projector",)
    c.optim.schedule = "constant"
    c.optim.init_lr = 5e-4
    c.optim.warmup_steps = 0
    c.num_epochs = 1.0
    c.num_steps = 0
    return c


def finetune_stage(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """Stage 2: VPG (Q-Former, query tokens, ln_vision) + projector; warm-up then cosine."""
    c.stage = "finetune"
    c.trainable = VPG_PARTS
    c.optim.schedule = "warmup_cosine"
    c.optim.init_lr = 1e-4
    c.optim.min_lr = 5e-5
    c.optim.warmup_lr = 1e-6
    c.optim.warmup_steps = 2000
    return c


# Stage 3 as MiniGPT-4 (and VPGTrans's VL-Vicuna) train it: each sample's instruction, drawn
# from MiniGPT-4's alignment prompts unless the sample brings its own, fills the template's {}.
INSTRUCT_PROMPT = "###Human: <Img><ImageHere></Img> {} ###Assistant: "
INSTRUCTIONS = (
    "Describe this image in detail.",
    "Take a look at this image and describe what you notice.",
    "Please provide a detailed description of the picture.",
    "Could you describe the contents of this image for me?",
)


def instruct_stage(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """Stage 3 (chat models): MiniGPT-4-style instruction tuning, 800 iterations of batch 120."""
    c.stage = "instruct"
    c.trainable = VPG_PARTS
    c.optim.schedule = "warmup_cosine"
    c.optim.init_lr = 1e-5
    c.optim.min_lr = 1e-6
    c.optim.warmup_lr = 1e-6
    c.optim.warmup_steps = 200
    c.num_steps = 800
    c.batch_size = 120
    c.data.max_len = 160
    c.data.prompt = INSTRUCT_PROMPT
    c.data.instructions = INSTRUCTIONS
    c.data.text_processor = "none"
    c.data.end = "###"
    c.chat_template = "vicuna_v0"  # the same prompt, as the chat renders it
    return c
