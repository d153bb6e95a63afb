"""Hugging Face interop, one module per tower: config translation (both ways) and tensor names.

``vit``, ``qformer``: BLIP-2's vision model and Q-Former. ``opt``, ``llama``: the LLM families,
each exposing ``MODEL_TYPES``, ``config_from_hf``, ``config_to_hf``, ``weight_rules`` and
``is_unused_key``; ``llms`` is the table from a family name / HF ``model_type`` to its module.
``blip2`` composes them into ``Blip2ForConditionalGeneration``. The model files never see HF
names: a tower's architecture lives in ``vpgtrans_jax.models``, its HF face here.
"""
