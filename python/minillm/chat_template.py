"""A model's chat template, rendered as Hugging Face transformers' `apply_chat_template` renders it.

The template comes from the model directory: `chat_template.jinja`, else `chat_template.json`
({"chat_template": ...}), else the `chat_template` key of tokenizer_config.json (a string, or a list of
{"name", "template"} of which "default" is used). The Jinja2 environment matches transformers': an
ImmutableSandboxedEnvironment with trim_blocks and lstrip_blocks on, the loopcontrols extension, a
`{% generation %}` block tag (rendered as its body), the globals `raise_exception` and `strftime_now`,
and a `tojson` filter that does not escape HTML and takes json.dumps' options. The render's variables
are the special tokens of tokenizer_config.json (bos_token, eos_token, ...: strings), `messages`,
`tools`, `documents`, `add_generation_prompt` and any extra keyword arguments.
"""
import json
import os
from datetime import datetime

import jinja2
import jinja2.ext
from jinja2.sandbox import ImmutableSandboxedEnvironment

_SPECIAL_TOKEN_KEYS = ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token")
_CONTINUE_TAG = "CONTINUE_FINAL_MESSAGE_TAG "


class ChatTemplateError(ValueError):
    """A template that cannot be loaded or rendered for these messages (the template's own
    raise_exception included)."""


class _GenerationTag(jinja2.ext.Extension):
    """`{% generation %}...{% endgeneration %}` marks assistant text for training masks in
    transformers; for rendering it is its body."""

    tags = {"generation"}

    def parse(self, parser):
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
        return jinja2.nodes.CallBlock(self.call_method("_body"), [], [], body).set_lineno(lineno)

    def _body(self, caller):
        return caller()


def _raise_exception(message):
    raise jinja2.exceptions.TemplateError(message)


def _tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
    return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def _strftime_now(fmt):
    return datetime.now().strftime(fmt)


def compile_template(source):
    """The Jinja2 template object for a chat template string (TemplateSyntaxError on bad syntax)."""
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                        extensions=[_GenerationTag, jinja2.ext.loopcontrols])
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = _strftime_now
    return env.from_string(source)


def _token_text(value):
    """tokenizer_config.json writes a special token as a string or as an AddedToken dict."""
    if isinstance(value, dict):
        return value.get("content")
    return value if isinstance(value, str) else None


def _read_json(path):
    with open(path, encoding="utf-8") as f:
        return json.load(f)


class ChatTemplate:
    """ChatTemplate(source, special_tokens={}) or ChatTemplate.from_dir(model_dir) (None when the
    model has no template).

    render(messages, add_generation_prompt=True, tools=None, documents=None,
           continue_final_message=False, **kwargs) -> str"""

    def __init__(self, source, special_tokens=None):
        self.source = source
        self.special_tokens = dict(special_tokens or {})
        try:
            self._template = compile_template(source)
        except jinja2.exceptions.TemplateSyntaxError as e:
            raise ChatTemplateError(f"chat template: syntax error at line {e.lineno}: {e.message}") from None

    @classmethod
    def from_dir(cls, model_dir):
        config_path = os.path.join(model_dir, "tokenizer_config.json")
        config = _read_json(config_path) if os.path.isfile(config_path) else {}
        special = {k: t for k in _SPECIAL_TOKEN_KEYS if (t := _token_text(config.get(k))) is not None}
        source = None
        jinja_path = os.path.join(model_dir, "chat_template.jinja")
        json_path = os.path.join(model_dir, "chat_template.json")
        if os.path.isfile(jinja_path):
            with open(jinja_path, encoding="utf-8") as f:
                source = f.read()
        elif os.path.isfile(json_path):
            source = _read_json(json_path).get("chat_template")
        else:
            source = config.get("chat_template")
        if isinstance(source, list):  # named templates: [{"name": "default", "template": ...}, ...]
            named = {t.get("name"): t.get("template") for t in source if isinstance(t, dict)}
            source = named.get("default")
        if not isinstance(source, str) or not source:
            return None
        return cls(source, special)

    def render(self, messages, add_generation_prompt=True, tools=None, documents=None,
               continue_final_message=False, **kwargs):
        if continue_final_message and add_generation_prompt:
            raise ChatTemplateError("continue_final_message and add_generation_prompt cannot both be set")
        final = None
        if continue_final_message:
            if not messages or not isinstance(messages[-1].get("content"), str):
                raise ChatTemplateError("continue_final_message needs a final message with text content")
            final = messages[-1]["content"]
            messages = [*messages[:-1], {**messages[-1], "content": final + _CONTINUE_TAG}]
        variables = {**self.special_tokens, **kwargs}
        try:
            text = self._template.render(messages=messages, tools=tools, documents=documents,
                                         add_generation_prompt=add_generation_prompt, **variables)
        except jinja2.exceptions.TemplateError as e:
            raise ChatTemplateError(f"chat template: {e}") from None
        except (TypeError, ValueError, KeyError, IndexError, AttributeError) as e:
            raise ChatTemplateError(f"chat template: {type(e).__name__}: {e}") from None
        if final is not None:
            # Cut the rendered chat where the final message ends, as transformers does.
            tag = _CONTINUE_TAG.strip()
            if final.strip() not in text or tag not in text:
                raise ChatTemplateError("continue_final_message: the template drops part of the final message")
            at = text.rindex(tag)
            text = text[:at] if text[at:at + len(_CONTINUE_TAG)] == _CONTINUE_TAG else text[:at].rstrip()
        return text
