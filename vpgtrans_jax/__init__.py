"""vpgtrans-jax: VPGTrans (visual prompt generator transfer across LLMs) in JAX/Flax NNX."""

__version__ = "0.1.0"
