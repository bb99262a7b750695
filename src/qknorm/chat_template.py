"""A tokenizer's chat template: find it beside tokenizer.json, render a conversation in a sandbox, and name the
tokens that end the model's turn.

    chat = find_chat_template(Path("path/to/Qwen3-0.6B"))           # None when the directory has no template
    text = chat.render([Message("user", "Hello")])                  # the prompt, ending with the assistant header
    stop = chat.stop_tokens(tokenizer)                              # {id: token}: generation ends at any of them

Where the template comes from (Hugging Face's layout): DIR/chat_template.jinja, else the "chat_template" string
of DIR/tokenizer_config.json (a list of named templates: the one named "default"). The special tokens the
template may use (bos_token, eos_token, ...) are tokenizer_config.json's.

Templates are untrusted input: they are rendered with jinja2's ImmutableSandboxedEnvironment (no attribute of
Python internals, no mutation of what is passed in), with the options and helpers transformers gives them
(trim_blocks, lstrip_blocks, loopcontrols; raise_exception, strftime_now, a tojson that does not escape HTML), so
the text equals transformers' `apply_chat_template(..., tokenize=False, add_generation_prompt=True)`. On top of
that, `*` and `**` may not build a string or list longer than MAX_RENDER_CHARS or a power above 2**64, so a
template cannot exhaust memory that way. Every failure (syntax, a blocked access, raise_exception, anything the
template raises) is a ConfigError naming the file.

End of turn: the model's turn ends at the first token of the set (each only when it is a single token of the
tokenizer's vocabulary): tokenizer_config.json's eos_token, plus each of the known end-of-turn markers
END_OF_TURN_MARKERS ("<|im_end|>" ChatML/Qwen/SmolLM, "<end_of_turn>" Gemma, "<|eot_id|>" Llama 3, "<|end|>"
Phi-3, "<|endoftext|>") that the template itself writes. Gemma's eos_token is "<eos>" while its turns end with
"<end_of_turn>", and a Llama 3 base tokenizer's eos is "<|end_of_text|>" while its template ends turns with
"<|eot_id|>": the union stops where transformers' generation_config.json eos ids would.
"""
from __future__ import annotations

import dataclasses
import json
import math
from datetime import datetime
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

from .errors import ConfigError
from .io.names import CHAT_TEMPLATE_NAME, TOKENIZER_CONFIG_NAME

__all__ = ["Message", "ChatTemplate", "find_chat_template", "END_OF_TURN_MARKERS", "MAX_RENDER_CHARS"]

END_OF_TURN_MARKERS = ("<|im_end|>", "<end_of_turn>", "<|eot_id|>", "<|end|>", "<|endoftext|>")
MAX_RENDER_CHARS = 1 << 24  # the longest string or list `*` may build in a template (16 Mi items)
_MAX_FILE_BYTES = 64 << 20  # tokenizer_config.json / chat_template.jinja read at most this large
_SPECIAL_KEYS = ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token")


@dataclasses.dataclass(frozen=True)
class Message:
    role: str  # "system", "user" or "assistant"
    content: str


@dataclasses.dataclass(frozen=True)
class ChatTemplate:
    """A chat template and the special tokens it is rendered with."""

    source: str  # the Jinja text
    origin: str  # the file it came from (for error messages)
    special_tokens: Dict[str, str]  # bos_token, eos_token, ... as tokenizer_config.json gives them

    def render(self, messages: Sequence[Message], *, add_generation_prompt: bool = True) -> str:
        """The conversation as the template writes it (ConfigError naming the file if the template fails)."""
        try:
            import jinja2
        except ImportError:
            raise ConfigError(f"{self.origin}: rendering a chat template needs jinja2 (pip install "
                              "'qknorm[chat]')") from None
        try:
            template = _environment().from_string(self.source)
            return template.render(messages=[dataclasses.asdict(m) for m in messages],
                                   add_generation_prompt=add_generation_prompt, **self.special_tokens)
        except jinja2.exceptions.SecurityError as e:
            raise ConfigError(f"{self.origin}: the chat template was stopped by the sandbox: {_line(e)}") from None
        except Exception as e:  # syntax, raise_exception, undefined names, whatever the template raises
            raise ConfigError(f"{self.origin}: the chat template failed: {type(e).__name__}: {_line(e)}") from None

    def stop_tokens(self, tokenizer) -> Dict[int, str]:
        """{id: token} of the end-of-turn tokens (module docstring) that are single tokens of `tokenizer`."""
        wanted: List[str] = []
        eos = self.special_tokens.get("eos_token")
        if eos:
            wanted.append(eos)
        wanted += [m for m in END_OF_TURN_MARKERS if m in self.source and m not in wanted]
        stops = {}
        for token in wanted:
            i = tokenizer.token_to_id(token)
            if i is not None:
                stops[int(i)] = token
        return stops


def _line(e: BaseException) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0]


def _read_text(path: Path) -> str:
    if path.stat().st_size > _MAX_FILE_BYTES:
        raise ConfigError(f"{path}: {path.stat().st_size:,} bytes; a tokenizer file of at most "
                          f"{_MAX_FILE_BYTES >> 20} MiB is read")
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: cannot read it as UTF-8 text ({_line(e)})") from None


def _token_text(value: Any) -> Optional[str]:
    """A special token as tokenizer_config.json writes it: a string, or an AddedToken dict with "content"."""
    if isinstance(value, str):
        return value
    if isinstance(value, dict) and isinstance(value.get("content"), str):
        return value["content"]
    return None


def _template_of_config(config: Dict[str, Any], path: Path) -> Optional[str]:
    t = config.get("chat_template")
    if t is None or isinstance(t, str):
        return t
    if isinstance(t, list):  # named templates: [{"name": "default", "template": "..."}, {"name": "tool_use", ...}]
        named = {d.get("name"): d.get("template") for d in t if isinstance(d, dict)}
        if isinstance(named.get("default"), str):
            return named["default"]
    raise ConfigError(f"{path}: \"chat_template\" must be a string or a list of named templates with a \"default\" "
                      "one")


def find_chat_template(directory: Path) -> Optional[ChatTemplate]:
    """The chat template stored in `directory` (module docstring), or None when it has none."""
    d = Path(directory)
    config: Dict[str, Any] = {}
    cfg_path = d / TOKENIZER_CONFIG_NAME
    if cfg_path.is_file():
        try:
            config = json.loads(_read_text(cfg_path))
        except ValueError as e:
            raise ConfigError(f"{cfg_path}: not valid JSON ({_line(e)})") from None
        if not isinstance(config, dict):
            raise ConfigError(f"{cfg_path}: expected a JSON object, got {type(config).__name__}")
    special = {k: t for k in _SPECIAL_KEYS if (t := _token_text(config.get(k))) is not None}
    jinja_path = d / CHAT_TEMPLATE_NAME
    if jinja_path.is_file():
        return ChatTemplate(_read_text(jinja_path), str(jinja_path), special)
    source = _template_of_config(config, cfg_path)
    return ChatTemplate(source, str(cfg_path), special) if source is not None else None


def _environment():
    """jinja2's immutable sandbox with transformers' options and helpers, and bounded `*` / `**`."""
    import jinja2
    import jinja2.ext
    import jinja2.nodes
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    class Sandbox(ImmutableSandboxedEnvironment):
        intercepted_binops = frozenset({"*", "**"})

        def call_binop(self, context, operator, left, right):
            if operator == "**" and isinstance(right, (int, float)) and isinstance(left, (int, float)) \
                    and abs(left) > 1 and right > 64 / math.log2(abs(left)):
                raise jinja2.exceptions.SecurityError(f"{left!r} ** {right!r} is too large")
            if operator == "*":
                for seq, n in ((left, right), (right, left)):
                    if isinstance(seq, (str, list, tuple)) and isinstance(n, int) and len(seq) * n > MAX_RENDER_CHARS:
                        raise jinja2.exceptions.SecurityError(f"a sequence of {len(seq)} items x {n} is too long")
            return super().call_binop(context, operator, left, right)

    def raise_exception(message):
        raise jinja2.exceptions.TemplateError(message)

    def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

    class Generation(jinja2.ext.Extension):
        """`{% generation %}...{% endgeneration %}` (transformers marks the assistant's text with it): the body."""
        tags = {"generation"}

        def parse(self, parser):
            lineno = next(parser.stream).lineno
            body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
            return jinja2.nodes.CallBlock(self.call_method("_body"), [], [], body).set_lineno(lineno)

        def _body(self, caller):
            return caller()

    env = Sandbox(trim_blocks=True, lstrip_blocks=True, extensions=[jinja2.ext.loopcontrols, Generation])
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    return env
