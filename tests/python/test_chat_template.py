"""Chat templates rendered as transformers' apply_chat_template renders them (python/minillm/chat_template.py).

Needs jinja2 only; where transformers is installed (the GPU machine) the same templates are also rendered
by transformers and compared."""
import json
import os
import shutil

import pytest

jinja2 = pytest.importorskip("jinja2")

from minillm.chat_template import ChatTemplate, ChatTemplateError  # noqa: E402

FIXTURE = os.path.join(os.path.dirname(__file__), "..", "fixtures", "chat_tokenizer")

MESSAGES = [
    {"role": "system", "content": "You are terse."},
    {"role": "user", "content": "  Hi <there> & \"you\"  "},
    {"role": "assistant", "content": "Hello."},
    {"role": "user", "content": "Count: 1, 2, 3?"},
]

# Templates that use what transformers' environment adds: trim_blocks/lstrip_blocks, tojson (no HTML
# escaping, indent), loopcontrols, {% generation %}, raise_exception, strftime_now, special tokens.
TEMPLATES = {
    "blocks": (
        "{{ bos_token }}\n"
        "{% for m in messages %}\n"
        "    {% if m.role == 'system' %}\n"
        "[SYS] {{ m.content }}\n"
        "    {% else %}\n"
        "[{{ m.role | upper }}] {{ m.content | trim }}{{ eos_token if m.role == 'assistant' }}\n"
        "    {% endif %}\n"
        "{% endfor %}\n"
        "{% if add_generation_prompt %}[ASSISTANT]{% endif %}"
    ),
    "tojson_loopcontrols": (
        "{% for m in messages %}{% if m.role == 'system' %}{% continue %}{% endif %}"
        "{{ m | tojson }}{{ '\\n' }}{% if loop.index >= 3 %}{% break %}{% endif %}{% endfor %}"
        "{{ messages[-1] | tojson(indent=2) }}"
        "{% if tools %}{{ tools | tojson }}{% endif %}"
    ),
    "generation_tag": (
        "{% for m in messages %}{% if m.role == 'assistant' %}{% generation %}<a>{{ m.content }}</a>{% endgeneration %}"
        "{% else %}<{{ m.role }}>{{ m.content }}{% endif %}{% endfor %}"
        "{% if add_generation_prompt %}<a>{% endif %}"
    ),
    "date": "{{ strftime_now('%Y') | length }} {{ messages | length }}{% if add_generation_prompt %}>{% endif %}",
}


def _tok():
    return ChatTemplate.from_dir(FIXTURE)


def test_fixture_template_renders_chatml():
    t = _tok()
    assert t is not None and t.special_tokens == {"eos_token": "<|im_end|>", "pad_token": "<|endoftext|>"}
    assert t.render(MESSAGES[1:2], add_generation_prompt=True) == (
        "<|im_start|>user\nHi <there> & \"you\"<|im_end|>\n<|im_start|>assistant\n")
    assert t.render(MESSAGES[:3], add_generation_prompt=False) == (
        "<|im_start|>system\nYou are terse.<|im_end|>\n<|im_start|>user\nHi <there> & \"you\"<|im_end|>\n"
        "<|im_start|>assistant\nHello.<|im_end|>\n")


def test_raise_exception_is_an_error_naming_the_template_message():
    with pytest.raises(ChatTemplateError, match="unknown role: robot"):
        _tok().render([{"role": "robot", "content": "beep"}])


def test_trim_and_lstrip_blocks():
    t = ChatTemplate(TEMPLATES["blocks"], {"bos_token": "<s>", "eos_token": "</s>"})
    assert t.render(MESSAGES, add_generation_prompt=True) == (
        "<s>\n[SYS] You are terse.\n[USER] Hi <there> & \"you\"\n[ASSISTANT] Hello.</s>\n"
        "[USER] Count: 1, 2, 3?\n[ASSISTANT]")


def test_tojson_does_not_escape_html_and_takes_indent():
    out = ChatTemplate(TEMPLATES["tojson_loopcontrols"]).render(MESSAGES, tools=[{"name": "f<x>"}])
    lines = out.split("\n")
    assert lines[0] == json.dumps(MESSAGES[1], ensure_ascii=False)
    assert lines[1] == json.dumps(MESSAGES[2], ensure_ascii=False)  # {% break %} after the third message
    assert "\n".join(lines[2:]).startswith(json.dumps(MESSAGES[-1], indent=2))
    assert out.endswith('[{"name": "f<x>"}]')


def test_generation_tag_and_strftime_now():
    assert ChatTemplate(TEMPLATES["generation_tag"]).render(MESSAGES[1:3]) == (
        "<user>  Hi <there> & \"you\"  <a>Hello.</a><a>")
    assert ChatTemplate(TEMPLATES["date"]).render(MESSAGES) == "4 4>"


def test_continue_final_message_cuts_after_the_final_text():
    t = _tok()
    msgs = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "The answer is"}]
    assert t.render(msgs, add_generation_prompt=False, continue_final_message=True) == (
        "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\nThe answer is")


def test_sandbox_refuses_unsafe_access():
    t = ChatTemplate("{{ messages.__class__.__mro__ }}")
    with pytest.raises(ChatTemplateError):
        t.render(MESSAGES)
    t = ChatTemplate("{% set x = messages.append(1) %}{{ x }}")  # immutable sandbox
    with pytest.raises(ChatTemplateError):
        t.render(MESSAGES)


def test_syntax_error_and_missing_template(tmp_path):
    with pytest.raises(ChatTemplateError, match="syntax error"):
        ChatTemplate("{% for m in messages %}")
    shutil.copy(os.path.join(FIXTURE, "tokenizer.json"), tmp_path)
    assert ChatTemplate.from_dir(str(tmp_path)) is None
    (tmp_path / "chat_template.jinja").write_text("{{ messages[0].content }}!")
    assert ChatTemplate.from_dir(str(tmp_path)).render(MESSAGES[1:]) == MESSAGES[1]["content"] + "!"


@pytest.mark.parametrize("name", sorted(TEMPLATES) + ["fixture"])
@pytest.mark.parametrize("add_generation_prompt", [False, True])
def test_same_as_transformers(name, add_generation_prompt):
    transformers = pytest.importorskip("transformers")
    tok = transformers.PreTrainedTokenizerFast(tokenizer_file=os.path.join(FIXTURE, "tokenizer.json"),
                                                bos_token="<s>", eos_token="</s>")
    source = _tok().source if name == "fixture" else TEMPLATES[name]
    msgs = MESSAGES[1:] if name == "fixture" else MESSAGES
    tools = [{"name": "f<x>"}] if name == "tojson_loopcontrols" else None
    ours = ChatTemplate(source, {"bos_token": "<s>", "eos_token": "</s>"}).render(
        msgs, add_generation_prompt=add_generation_prompt, tools=tools)
    theirs = tok.apply_chat_template(msgs, chat_template=source, tokenize=False, tools=tools,
                                     add_generation_prompt=add_generation_prompt)
    assert ours == theirs
