"""`qknorm generate PATH --prompt TEXT`: continue a prompt with a trained or converted model, streaming.

    qknorm generate runs/llama-debug --prompt "def main():"                   # greedy, 128 new tokens
    qknorm generate path/to/Qwen3-0.6B --prompt "Hello" --temperature 0.8 --top-p 0.95 --seed 0
    qknorm generate path/to/SmolLM2-135M-Instruct --chat --prompt "What is 2+2?" --system "Be brief."

PATH is what `qknorm inspect` reads: our model directory (config.json with "qknorm_config"), a training
checkpoint, a run directory (its final model, else its newest checkpoint), or a Hugging Face checkpoint
directory of a supported family. Tokens are bytes when the model's vocabulary is 256 and no tokenizer.json is
stored with it; otherwise that tokenizer.json is read with the `tokenizers` library (offline). The prompt is
encoded without special tokens, as `qknorm train` encodes its data.

--chat: the prompt is the user's message (after --system's, if given) written by the tokenizer's chat template
(chat_template.jinja or tokenizer_config.json's "chat_template" beside the tokenizer.json; rendered in jinja2's
sandbox: chat_template.py), ending with the assistant's header; generation stops at the template's end-of-turn
token (tokenizer_config.json's eos_token, or a known end-of-turn marker the template writes, such as
"<|im_end|>"). A model without a template, a template that fails or is stopped by the sandbox: one line, exit 2.

Only the continuation is printed (not the prompt), piece by piece as the tokens come, then a newline.
Decoding is incremental: a character whose UTF-8 bytes are split across tokens is printed once it is whole
(an invalid byte sequence prints U+FFFD). A reader that stops early (`| head -c 10`) ends generation quietly
with status 0. Bad input (missing directory, no usable tokenizer, bad numbers, a prompt + --max-new-tokens
longer than the model's max_seq_len) prints one line and exits 2.
"""
from __future__ import annotations

import argparse
import codecs
import os
import sys
from pathlib import Path
from typing import Dict, List, Optional, Tuple

from ..chat_template import END_OF_TURN_MARKERS, Message, find_chat_template
from ..errors import ConfigError
from ..io.names import CHAT_TEMPLATE_NAME, TOKENIZER_CONFIG_NAME, TOKENIZER_NAME
from ..io.model_dir import find_tokenizer
from ..data.tokenizer import load_tokenizer
from ..progress import for_model
from ._common import non_negative_float, non_negative_int, one_line_warnings, positive_int

# library field -> flag, for error messages (cli/__init__.py rewrites them)
FIELD_FLAGS = {"max_new_tokens": "--max-new-tokens", "temperature": "--temperature", "top_k": "--top-k",
               "top_p": "--top-p", "seed": "--seed", "eos_token_id": "--eos-token-id"}


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "generate", help="continue a prompt with a model directory (ours or HF), streaming the text",
        description="Continue --prompt with a qknorm or Hugging Face model directory using a KV cache; greedy "
                    "by default, sampling with --temperature/--top-k/--top-p; prints the new text as it comes.")
    p.add_argument("path", metavar="PATH", help="our model, run or checkpoint directory, or an HF checkpoint dir")
    p.add_argument("--prompt", required=True, metavar="TEXT", help="text to continue")
    p.add_argument("--max-new-tokens", type=positive_int, default=128, metavar="N", help="tokens to add (128)")
    p.add_argument("--temperature", type=non_negative_float, default=0.0, metavar="T",
                   help="0 = greedy (default); > 0 samples from softmax(logits / T)")
    p.add_argument("--top-k", type=positive_int, default=None, metavar="K", help="sample among the K most likely")
    p.add_argument("--top-p", type=_probability, default=None, metavar="P",
                   help="nucleus sampling: the most likely tokens up to probability P, in (0, 1]")
    p.add_argument("--seed", type=non_negative_int, default=None, metavar="S", help="seed of the sampler")
    p.add_argument("--eos-token-id", type=non_negative_int, default=None, metavar="ID",
                   help="stop when the model produces this token id")
    p.add_argument("--chat", action="store_true",
                   help="write --prompt as the user's message with the tokenizer's chat template and stop at its "
                        "end-of-turn token")
    p.add_argument("--system", default=None, metavar="TEXT", help="with --chat: a system message before the prompt")
    p.add_argument("--no-progress", action="store_true",
                   help="no progress on stderr (shown for large models: a line per stage with elapsed time)")
    return p


def _probability(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number in (0, 1], got {text!r}") from None
    if not 0 < v <= 1:
        raise argparse.ArgumentTypeError(f"expected a number in (0, 1], got {text!r}")
    return v


# ---------------------------------------------------------------------------------------------- text streams
class ByteText:
    """Byte-level tokens (vocab 256) -> text, incrementally: a UTF-8 character is emitted once all its bytes came."""

    def __init__(self):
        self._dec = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def encode(self, text: str) -> List[int]:
        return list(text.encode("utf-8"))

    def step(self, token: int) -> str:
        return self._dec.decode(bytes([token]))

    def finish(self) -> str:
        return self._dec.decode(b"", final=True)


class TokenizerText:
    """A `tokenizers.Tokenizer` -> text, incrementally. Each step decodes the ids since `prefix` twice, without
    and with the ones not yet shown, and emits the difference unless it ends in U+FFFD (a character still
    missing bytes). Decoding from a few tokens back keeps decoders that drop a leading space (Metaspace)
    right, and each step costs O(1) decodes of a few tokens."""

    def __init__(self, tokenizer, path: Optional[Path] = None):
        self.tok = tokenizer
        self.path = path  # the tokenizer.json it was read from
        self._ids: List[int] = []
        self._prefix = self._read = 0  # ids[prefix:read] were shown (context); ids[read:] not yet

    def encode(self, text: str) -> List[int]:
        return self.tok.encode(text, add_special_tokens=False).ids

    def _new_text(self) -> str:
        shown = self.tok.decode(self._ids[self._prefix:self._read], skip_special_tokens=True)
        text = self.tok.decode(self._ids[self._prefix:], skip_special_tokens=True)
        return text[len(shown):]

    def step(self, token: int) -> str:
        self._ids.append(token)
        new = self._new_text()
        if not new or new.endswith("\ufffd"):
            return ""
        self._prefix, self._read = self._read, len(self._ids)
        return new

    def finish(self) -> str:
        return self._new_text()


def text_codec(path: Path, source: Path, vocab_size: int):
    """TokenizerText of the tokenizer.json stored with the model (in `source`, the directory it was read
    from, or in PATH), else ByteText for a 256-token model; ConfigError when neither applies."""
    tok_path = find_tokenizer(source) or find_tokenizer(path)
    if tok_path is not None:
        return TokenizerText(load_tokenizer(tok_path)[0], tok_path)
    if vocab_size == 256:
        return ByteText()
    raise ConfigError(f"{path}: the model's vocabulary has {vocab_size} tokens and there is no tokenizer.json "
                      "(bytes are used only for vocab 256)")


def _chat(args, codec) -> Tuple[str, Dict[int, str]]:
    """The --chat prompt (the template's text for [system], user) and the end-of-turn tokens {id: token}."""
    if not isinstance(codec, TokenizerText):
        raise ConfigError(f"--chat: {args.path} has no tokenizer.json (a byte-level model has no chat template)")
    chat = find_chat_template(codec.path.parent)
    if chat is None:
        raise ConfigError(f"--chat: {codec.path.parent} has no chat template (no {CHAT_TEMPLATE_NAME} and no "
                          f"\"chat_template\" in {TOKENIZER_CONFIG_NAME} beside {TOKENIZER_NAME})")
    messages = ([Message("system", args.system)] if args.system is not None else []) + [Message("user", args.prompt)]
    text, stops = chat.render(messages), chat.stop_tokens(codec.tok)
    if not stops and args.eos_token_id is None:
        raise ConfigError(f"--chat: no end-of-turn token for {chat.origin} in the tokenizer's vocabulary (its "
                          f"eos_token, or one of {', '.join(END_OF_TURN_MARKERS)} in the template); give "
                          "--eos-token-id")
    return text, stops


def _prompt_ids(args, codec, config, text: str) -> List[int]:
    ids = codec.encode(text)
    if not ids:
        raise ConfigError("--prompt: no tokens (give some text)")
    if max(ids) >= config.vocab_size:
        raise ConfigError(f"the tokenizer.json stored with {args.path} produces id {max(ids)} >= the model's "
                          f"vocab_size {config.vocab_size}")
    return ids  # the length and --eos-token-id are checked by model.stream (generation.check_request)


def _write(out, text: str) -> None:
    if text:
        out.write(text)
        out.flush()


def run(args) -> int:
    import torch

    path = Path(args.path)
    # only the reading is a stage: the generated text itself streams to stdout, where a live line would clash
    prog = for_model("qknorm generate", path, enabled=not args.no_progress)
    with one_line_warnings("qknorm generate"), prog.stage("reading the model"):  # e.g. a run's newest checkpoint
        from ..pretrained import open_model

        opened = open_model(path)
    model, source = opened.model.float().eval(), opened.path
    codec = text_codec(path if path.is_dir() else path.parent, source, model.config.vocab_size)
    if args.system is not None and not args.chat:
        raise ConfigError("--system is a message of --chat: add --chat")
    text, stops = _chat(args, codec) if args.chat else (args.prompt, {})
    ids = _prompt_ids(args, codec, model.config, text)
    stop_ids = set(stops) | ({args.eos_token_id} if args.eos_token_id is not None else set())
    tokens = model.stream(torch.tensor([ids]), args.max_new_tokens, temperature=args.temperature,
                          top_k=args.top_k, top_p=args.top_p, seed=args.seed, eos_token_id=args.eos_token_id)
    # ^ checks every argument now (ConfigError naming the field, shown as its flag), before any output
    try:
        for tok in tokens:  # (1,) a step
            if int(tok[0]) in stop_ids:  # --eos-token-id, or --chat's end of turn
                break
            _write(sys.stdout, codec.step(int(tok[0])))
        _write(sys.stdout, codec.finish() + "\n")
    except BrokenPipeError:  # the reader went away (`| head`): stop, and keep Python's exit flush quiet
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return 0
