"""Talking to a VL model: conversations with chat templates, a streaming chat session, the
terminal chat and the gradio web UI (``docs/chat.md``)."""

from vpgtrans_jax.chat.conversation import (
    DEFAULT_TEMPLATE,
    TEMPLATES,
    Conversation,
    Template,
    get_template,
    truncation_notice,
)

__all__ = [
    "DEFAULT_TEMPLATE",
    "TEMPLATES",
    "Conversation",
    "Template",
    "get_template",
    "truncation_notice",
]
