"""Offline demo assets: a synthetic dataset, its tiny tokenizer, tiny pretrained LLMs.

``prepare(config)`` resolves a tiny training config before ``train()`` starts (generating the
data and pretraining the LLM on first use, cached under ``~/.cache/vpgtrans-jax/``);
``transfer_assets`` builds the offline stand-ins of a transfer's inputs. Real runs never use this
package.
"""

from vpgtrans_jax.tiny.prepare import prepare

__all__ = ["prepare"]
