"""Text generation for ``VLModel``: greedy, sampling and beam search matching Hugging Face.

``generate`` returns token ids; ``generate_text`` goes from images and prompt strings to
strings with the VPGTrans end-of-sequence convention (the token of ``"\\n"``; ``"###"`` and the
``<ImageHere>`` template for stage-3 chat models).
"""

from vpgtrans_jax.generation.config import GenerationConfig
from vpgtrans_jax.generation.decode import decode, generate, generate_with_config
from vpgtrans_jax.generation.text import (
    decode_outputs,
    end_token_ids,
    generate_text,
    newline_eos_id,
)

__all__ = [
    "GenerationConfig",
    "decode",
    "decode_outputs",
    "end_token_ids",
    "generate",
    "generate_text",
    "generate_with_config",
    "newline_eos_id",
]
