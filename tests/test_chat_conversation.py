"""Conversations: each template's exact prompt, the image once at the start, the oldest turns
dropped (never the current one) when the context is full."""

from __future__ import annotations

import pytest

from vpgtrans_jax.chat.conversation import (
    TEMPLATES,
    Conversation,
    get_template,
    truncation_notice,
)
from vpgtrans_jax.errors import ChatInputError

TWO_TURNS = [("what is it?", "a cat"), ("and its colour?", None)]
EXPECTED = {
    "vicuna_v0": "###Human: <Img><ImageHere></Img> what is it? ###Assistant: a cat"
    "###Human: and its colour? ###Assistant: ",
    "vicuna_v1.1": "A chat between a curious user and an artificial intelligence assistant. The "
    "assistant gives helpful, detailed, and polite answers to the user's questions. USER: "
    "<Img><ImageHere></Img> what is it? ASSISTANT: a cat</s>USER: and its colour? ASSISTANT:",
    "llama2": "[INST] <<SYS>>\nYou are a helpful assistant. Answer the user's questions about "
    "the image.\n<</SYS>>\n\n<Img><ImageHere></Img> what is it? [/INST] a cat </s><s>[INST] "
    "and its colour? [/INST]",
    "llama3": "<|start_header_id|>system<|end_header_id|>\n\nYou are a helpful assistant. "
    "Answer the user's questions about the image.<|eot_id|><|start_header_id|>user"
    "<|end_header_id|>\n\n<Img><ImageHere></Img> what is it?<|eot_id|><|start_header_id|>"
    "assistant<|end_header_id|>\n\na cat<|eot_id|><|start_header_id|>user<|end_header_id|>\n\n"
    "and its colour?<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n",
    "blip2": "Question: what is it? Answer: a cat\nQuestion: and its colour? Answer:",
}
ENDS = {"vicuna_v0": "###", "vicuna_v1.1": "</s>", "llama2": "</s>", "llama3": "<|eot_id|>",
        "blip2": "\n"}  # fmt: skip


@pytest.mark.parametrize("name", sorted(TEMPLATES))
def test_each_template_renders_exactly(name):
    conv = Conversation(get_template(name))
    conv.ask(TWO_TURNS[0][0])
    conv.answer(TWO_TURNS[0][1])
    conv.ask(TWO_TURNS[1][0])
    assert conv.prompt() == EXPECTED[name]
    assert conv.template.end == ENDS[name]
    assert conv.prompt().count("<ImageHere>") == (0 if name == "blip2" else 1)


def test_vicuna_v0_first_turn_is_the_stage3_training_prompt():
    conv = Conversation(get_template("vicuna_v0"))
    conv.ask("Describe this image in detail.")
    assert (
        conv.prompt()
        == "###Human: <Img><ImageHere></Img> Describe this image in detail. ###Assistant: "
    )


def test_unknown_template_names_the_known_ones():
    with pytest.raises(ChatInputError, match="vicuna_v0, vicuna_v1.1, llama2, llama3, blip2"):
        get_template("alpaca")


def test_history_is_dropped_oldest_first_and_the_image_stays():
    conv = Conversation(get_template("vicuna_v0"))
    for i in range(4):
        conv.ask(f"question {i}")
        conv.answer(f"answer {i}")
    conv.ask("last question")
    words = lambda s: len(s.split())  # noqa: E731 - a stand-in tokenizer
    full = words(conv.prompt())
    dropped = conv.fit(words, full - 1)
    assert dropped == 1 and conv.turns[0] == ("question 1", "answer 1")
    assert conv.prompt().startswith("###Human: <Img><ImageHere></Img> question 1 ###Assistant: ")
    assert conv.fit(words, 10**6) == 0
    assert conv.fit(words, words(conv.template.render(conv.turns[-1:]))) == 3
    assert conv.turns == [("last question", None)]
    assert "dropped the oldest 3 turns" in truncation_notice(3)


def test_a_message_that_cannot_fit_alone_is_refused_and_nothing_is_lost():
    conv = Conversation(get_template("blip2"))
    conv.ask("hi")
    conv.answer("hello")
    conv.ask("word " * 50)
    with pytest.raises(ChatInputError, match="message too long"):
        conv.fit(lambda s: len(s.split()), 20)
    assert len(conv.turns) == 2


def test_a_stopped_reply_is_replaced_by_the_next_question():
    conv = Conversation(get_template("blip2"))
    conv.ask("first")
    conv.ask("second")
    assert conv.turns == [("second", None)]
    with pytest.raises(ValueError):
        conv.answer("x") or conv.answer("y")
