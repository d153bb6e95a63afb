"""The chat session and scripts/chat.py on a tiny random model whose directory records its
template and tokenizer: limits refused with one line, streamed answers equal ``generate``'s,
no recompilation across turns, the history cut oldest-first with a notice, the terminal chat
driven through stdin as a user would."""

from __future__ import annotations

import io
import json
import os
import shutil

import pytest
from PIL import Image

from tests.chat_util import make_chat_model_dir
from tests.scripts_util import run_script
from vpgtrans_jax.chat import bench, terminal
from vpgtrans_jax.chat.session import MAX_IMAGE_BYTES, ChatModel, ChatSettings
from vpgtrans_jax.checkpoint.model_dir import MANIFEST
from vpgtrans_jax.data.text import encode_generation
from vpgtrans_jax.errors import ChatInputError, ConfigError
from vpgtrans_jax.generation import decode_outputs, generate
from vpgtrans_jax.generation.stream import TRACES
from vpgtrans_jax.generation.text import text_end
from vpgtrans_jax.tiny import chat_corpus
from vpgtrans_jax.tiny.chat_model import tiny_instruct_config
from vpgtrans_jax.train import config_base, workdir
from vpgtrans_jax.train.export import export_info

QUESTIONS = ["what colour is the circle?", "how many squares are there?"]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("chat"))
    path, image = make_chat_model_dir(root)
    return root, path, image, ChatModel.load(path)


def _variant(path: str, out: str, **info) -> str:
    """A copy of model directory ``path`` whose manifest's ``info`` is ``info``."""
    shutil.copytree(path, out)
    manifest_path = os.path.join(out, MANIFEST)
    with open(manifest_path) as f:
        manifest = json.load(f)
    manifest["info"] = info
    with open(manifest_path, "w") as f:
        json.dump(manifest, f)
    return out


def test_template_and_tokenizer_come_from_the_model_directory(setup):
    root, path, _, chat = setup
    assert chat.template.name == "vicuna_v0" and chat.name == os.path.basename(path)
    assert ChatModel.load(path, template="blip2").template.name == "blip2"
    tokenizer = os.path.join(root, "data", "tokenizer")
    plain = _variant(path, os.path.join(root, "plain"), tokenizer=tokenizer)
    assert ChatModel.load(plain).template.name == "blip2"  # stage-1/2 models
    with pytest.raises(ChatInputError, match="unknown chat template 'nope'"):
        ChatModel.load(path, template="nope")
    with pytest.raises(ChatInputError, match="has no tokenizer.*--tokenizer"):
        ChatModel.load(_variant(path, os.path.join(root, "bare")))
    assert ChatModel.load(os.path.join(root, "bare"), tokenizer=tokenizer).template.name == "blip2"


def test_bad_input_is_refused_with_one_line_and_changes_nothing(setup, tmp_path):
    _, _, image, chat = setup
    session = chat.session()
    with pytest.raises(ChatInputError, match="no image yet"):
        session.ask("hello")
    session.set_image(image)
    bomb = tmp_path / "bomb.png"
    Image.new("L", (5000, 4100)).save(bomb)  # 20.5 megapixels in a small file
    (tmp_path / "notes.txt").write_text("not an image")
    cases = {
        str(bomb): "20500000 pixels, more than the limit of 20000000; refused before decoding",
        str(tmp_path / "notes.txt"): "not an image that can be read",
        str(tmp_path / "missing.png"): "is not a file",
    }
    for bad, reason in cases.items():
        with pytest.raises(ChatInputError, match=reason):
            session.set_image(bad)
    with pytest.raises(ChatInputError, match="more than the 10 MB limit"):
        session.set_image(b"\x89PNG" + bytes(MAX_IMAGE_BYTES))
    for message, reason in [("  ", "empty message"), ("x" * 2001, "2001 characters")]:
        with pytest.raises(ChatInputError, match=reason):
            session.ask(message)
    with pytest.raises(ChatInputError, match="temperature=9"):
        session.ask("hi", ChatSettings(temperature=9.0))
    assert session.pixels is not None and session.conversation.turns == []
    assert len(session.ask("what is it?", ChatSettings(max_new_tokens=4)).read()) >= 0


def test_streamed_answers_equal_generate_and_compile_once(setup):
    """Two turns: each answer is generate's greedy answer to the same prompt, streamed. The
    streaming programs are traced at most once per (prompt length, room) bucket; the same
    conversation again traces nothing."""
    _, _, image, chat = setup
    session = chat.session()
    session.set_image(image)
    settings = ChatSettings(max_new_tokens=6)
    before, shapes = dict(TRACES), set()
    for question in QUESTIONS:
        turns = session.conversation.turns + [(question, None)]
        prompt = session.conversation.template.render(turns)
        reply = session.ask(question, settings)
        pieces = list(reply)
        shapes.add(chat.last_shape)
        enc = encode_generation(chat.tokenizer, prompt, chat.last_shape[0])
        tokens = generate(
            chat.model, session.pixels, enc["input_ids"][None], enc["attention_mask"][None],
            image_offsets=enc["image_offset"][None], max_new_tokens=6, eos_token_id=chat.eos,
            pad_token_id=chat.pad,
        )  # fmt: skip
        want = decode_outputs(chat.tokenizer, tokens, chat.eos, chat.pad, text_end("###"))[0]
        assert "".join(pieces) == reply.text == want
        assert session.conversation.turns[-1] == (question, want)
    for program in ("prefill", "step"):
        assert TRACES[program] - before.get(program, 0) <= len(shapes), (TRACES, shapes)
    traced = dict(TRACES)
    session.reset()
    for question in QUESTIONS:
        session.ask(question, settings).read()
    assert dict(TRACES) == traced


def test_history_outgrowing_the_context_is_cut_with_a_notice(setup):
    _, _, image, chat = setup
    session = chat.session()
    session.set_image(image)
    settings = ChatSettings(max_new_tokens=40)  # 128 positions - 8 image - 40: 80 for the prompt
    notices = []
    for i in range(6):
        reply = session.ask(f"question number {i}: describe the shapes on the left side", settings)
        reply.read()
        notices.append(reply.notice)
    assert notices[0] is None and any(notices), notices
    assert "dropped the oldest" in [n for n in notices if n][0]
    prompt = session.conversation.prompt()
    assert prompt.count("<ImageHere>") == 1 and prompt.startswith("###Human: <Img><ImageHere>")
    with pytest.raises(ChatInputError, match="message too long for the model's context"):
        session.ask("shapes " * 200, settings)


def test_terminal_commands(setup, tmp_path):
    _, _, image, chat = setup
    (tmp_path / "bad.jpg").write_bytes(b"garbage")
    lines = [f"/image {tmp_path / 'bad.jpg'}", "/image", "hello", f"/image {image}",
             QUESTIONS[0], "", "/reset", QUESTIONS[1], "/what", "/quit", "never read"]  # fmt: skip
    out, err = io.StringIO(), io.StringIO()
    session = chat.session()
    terminal.run(session, ChatSettings(max_new_tokens=4), stdin=io.StringIO("\n".join(lines)),
                 out=out, err=err)  # fmt: skip
    errors = err.getvalue().splitlines()
    assert [e.split(":")[0] for e in errors] == ["error"] * 5, errors
    assert "not an image" in errors[0] and "needs a path" in errors[1]
    assert "no image yet" in errors[2] and "empty message" in errors[3]
    assert "unknown command '/what'" in errors[4]
    assert "(conversation cleared; same image)" in out.getvalue()
    assert session.conversation.turns[0][0] == QUESTIONS[1]  # /reset forgot the first


def test_chat_script_multi_turn_from_stdin(setup, tmp_path):
    _, path, image, _ = setup
    (tmp_path / "bad.png").write_bytes(b"not a png")
    stdin = "\n".join([QUESTIONS[0], f"/image {tmp_path / 'bad.png'}", QUESTIONS[1], "/reset",
                       f"/image {image}", QUESTIONS[0], "/quit"]) + "\n"  # fmt: skip
    r = run_script("scripts/chat.py", f"--model={path}", f"--image={image}",
                   "--max_new_tokens=4", stdin=stdin)  # fmt: skip
    assert r.returncode == 0, r.stderr[-2000:]
    assert "template vicuna_v0" in r.stdout and r.stdout.count("> ") >= 7
    errors = [line for line in r.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "not an image" in errors[0]
    # --ask: one conversation, one answer line each; --checkpoint is --model's old name.
    r = run_script("scripts/chat.py", f"--checkpoint={path}", f"--image={image}",
                   "--template=blip2", *[f"--ask={q}" for q in QUESTIONS],
                   "--max_new_tokens=4", "--num_beams=2")  # fmt: skip
    assert r.returncode == 0 and len(r.stdout.splitlines()) == 2, r.stderr[-2000:]


def test_chat_script_refuses_a_model_without_tokenizer(setup):
    root, path, image, _ = setup
    bare = _variant(path, os.path.join(root, "bare_for_script"))
    r = run_script("scripts/chat.py", f"--model={bare}", f"--image={image}", "--ask=hi")
    assert r.returncode == 2 and r.stderr.strip().count("\n") == 0, r.stderr
    assert r.stderr.startswith("error: model directory") and "--tokenizer" in r.stderr


def test_bench_prints_first_token_latency_and_rates(setup, capsys):
    _, _, image, chat = setup
    r = bench.run(chat, bench.Options(max_new_tokens=5, reps=1), image)
    assert r["new_tokens"] == 5 and r["first_token_s"] > 0 and r["stream_vs_generate"] > 0
    out = capsys.readouterr().out
    assert "time to first token" in out and "streamed / generate" in out


def test_webui_binds_locally_and_shares_only_when_asked():
    r = run_script("scripts/webui.py", "--help")
    assert r.returncode == 0, r.stderr
    flat = " ".join(r.stdout.split())
    assert "--host: address to bind (0.0.0.0: every interface) (default: '127.0.0.1')" in flat
    assert "--[no]share: also open a public gradio.live link (default: 'false')" in flat


def test_stage3_exports_record_their_chat_template_and_tokenizer():
    c = tiny_instruct_config()
    info = export_info(c)
    assert info["chat_template"] == "vicuna_v0" and info["stage"] == "instruct"
    assert os.path.isabs(info["tokenizer"])
    c.chat_template = ""  # stage-1/2 configs record none: the chat uses blip2
    assert "chat_template" not in export_info(c)


def test_tiny_instruction_corpus(setup):
    root = setup[0]
    data = os.path.join(root, "data")
    align = chat_corpus.ensure_chat_align(data)
    entries = json.load(open(os.path.join(align, "filter_cap.json")))["annotations"]
    questions = json.load(open(os.path.join(data, "annotations", "vqa_train_questions.json")))
    assert len(entries) == len(questions["questions"]) > 0
    images = [os.path.join(align, "image", f"{e['image_id']}.jpg") for e in entries]
    assert all(os.path.isfile(p) for p in images)
    assert chat_corpus.ensure_chat_align(data) == align  # cached
    texts = chat_corpus.chat_texts(data)
    assert texts and all(t.startswith("###Human: <Img></Img> ") for t in texts)
    assert all("###Assistant: " in t and t.endswith("###") for t in texts)


def test_workdirs_recorded_before_the_chat_fields_still_resume(tmp_path):
    """config.json files written before model.tiny_llm_corpus / chat_template existed."""
    c = config_base.base_config()
    old = json.loads(c.to_json_best_effort())
    del old["model"]["tiny_llm_corpus"], old["chat_template"]
    (tmp_path / "config.json").write_text(json.dumps(old))
    workdir.check_config(str(tmp_path), c, saved_steps=[5])  # resumes: no error
    old["model"]["tiny_llm_corpus"] = "captions"
    (tmp_path / "config.json").write_text(json.dumps(old))
    c.model.tiny_llm_corpus = "chat"
    with pytest.raises(ConfigError, match="tiny_llm_corpus"):
        workdir.check_config(str(tmp_path), c, saved_steps=[5])
