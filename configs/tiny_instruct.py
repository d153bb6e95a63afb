"""Stage 3 (instruction tuning), tiny random LLaMA-style towers on the synthetic instruction data
(descriptions and questions in the vicuna_v0 template); the embedded demo chat model of
scripts/chat.py and scripts/webui.py (vpgtrans_jax/tiny/chat_model.py)."""

from vpgtrans_jax.tiny.chat_model import tiny_instruct_config


def get_config(arg=None):
    return tiny_instruct_config(arg or "llama")
