"""`qknorm generate --chat`: the prompt is the tokenizer's chat template rendered as transformers renders it
(AutoTokenizer.apply_chat_template on the same directory, the independent reference), generation stops at the
end-of-turn token (checked against the model's own unstopped greedy continuation), a hostile template is stopped
by the sandbox (one line, exit 2), and the template travels with the tokenizer through runs, checkpoints and
`convert` both ways, and `retrofit`."""
import json
import shutil

import pytest
import torch

import qknorm
from qknorm.chat_template import ChatTemplate, Message, find_chat_template
from qknorm.cli import main
from qknorm.errors import ConfigError

from helpers.bpe import train_chat_bpe

pytest.importorskip("tokenizers")
jinja2 = pytest.importorskip("jinja2")
transformers = pytest.importorskip("transformers")

# ChatML as Qwen writes it, with statement blocks on their own lines: the whitespace depends on trim_blocks and
# lstrip_blocks being set as transformers sets them
CHATML = """{%- if messages[0]['role'] == 'system' %}
    {{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}
{%- else %}
    {{- '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}
{%- endif %}
{% for message in messages %}
  {% if message.role != 'system' %}
{{ '<|im_start|>' + message.role + '\\n' + message.content | trim + '<|im_end|>\\n' }}
  {% endif %}
{% endfor %}
{% if add_generation_prompt %}
{{ '<|im_start|>assistant\\n' }}
{% endif %}"""
TEXTS = ["You are a helpful assistant. What is two plus two? It is four.\n" * 40,
         "def add(x, y):\n    return x + y\n" * 40, "system user assistant hello there\n" * 40]


@pytest.fixture(scope="module")
def bpe():
    return train_chat_bpe(TEXTS)


def _chat_dir(d, bpe, *, template=CHATML, eos="<|im_end|>", as_jinja=False, seed=0):
    """A qknorm model directory holding the BPE's tokenizer.json and a tokenizer_config.json (template inside,
    or in chat_template.jinja)."""
    torch.manual_seed(seed)
    qknorm.save_model(qknorm.TransformerLM(qknorm.get_config("llama", "debug", vocab_size=bpe.get_vocab_size())), d)
    bpe.save(str(d / "tokenizer.json"))
    config = {"tokenizer_class": "PreTrainedTokenizerFast", "eos_token": eos, "bos_token": None}
    if as_jinja:
        (d / "chat_template.jinja").write_text(template)
    else:
        config["chat_template"] = template
    (d / "tokenizer_config.json").write_text(json.dumps(config))
    return d


def _hf_text(d, messages):
    tok = transformers.AutoTokenizer.from_pretrained(str(d), local_files_only=True)
    return tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


@pytest.mark.parametrize("as_jinja", [False, True])
def test_rendered_prompt_equals_transformers(tmp_path, bpe, as_jinja):
    d = _chat_dir(tmp_path, bpe, as_jinja=as_jinja)
    chat = find_chat_template(d)
    for messages in ([{"role": "user", "content": "  What is two plus two? "}],
                     [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hello"}]):
        ours = chat.render([Message(m["role"], m["content"]) for m in messages])
        assert ours == _hf_text(d, messages)
        assert ours.rstrip().endswith("<|im_start|>assistant")  # the generation prompt is there


def test_generation_stops_at_the_end_of_turn_token(tmp_path, bpe, capsys):
    """The stop token is taken from the model's own unstopped continuation, so the test knows it comes."""
    d = _chat_dir(tmp_path / "probe", bpe)
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is two plus two?"}]
    ids = bpe.encode(_hf_text(d, messages), add_special_tokens=False).ids
    model = qknorm.load_model(d)
    cont = model.generate(torch.tensor([ids]), 12)[0, len(ids):].tolist()  # greedy, never stopped
    eos = bpe.id_to_token(cont[3])
    d2 = _chat_dir(tmp_path / "m", bpe, eos=eos)
    stops = {bpe.token_to_id(eos), bpe.token_to_id("<|im_end|>")}
    k = next(i for i, t in enumerate(cont) if t in stops)
    assert k <= 3
    assert main(["generate", str(d2), "--chat", "--system", "Be brief.", "--prompt", "What is two plus two?",
                 "--max-new-tokens", "12", "--no-progress"]) == 0
    assert capsys.readouterr().out == bpe.decode(cont[:k]) + "\n"


@pytest.mark.parametrize("template, what", [
    ("{{ ''.__class__.__mro__[1].__subclasses__() }}", "sandbox"),  # Python internals
    ("{{ messages.append({'role': 'x'}) }}", "sandbox"),  # mutating what it was given
    ("{{ 'x' * 100000000 }}", "sandbox"),  # exhausting memory
    ("{{ 10 ** 1000000 }}", "sandbox"),
    ("{{ raise_exception('only user and assistant roles') }}", "only user and assistant roles"),
    ("{% for m in messages %}", "failed"),  # a syntax error
])
def test_a_hostile_or_broken_template_is_one_line_exit_2(tmp_path, bpe, capsys, template, what):
    d = _chat_dir(tmp_path, bpe, template=template)
    with pytest.raises(ConfigError, match=what):
        find_chat_template(d).render([Message("user", "hi")])
    assert main(["generate", str(d), "--chat", "--prompt", "hi", "--no-progress"]) == 2
    out, err = capsys.readouterr()
    assert out == "" and len(err.strip().splitlines()) == 1 and what in err and "Traceback" not in err, err


def test_the_sandbox_itself_refuses_python_internals():
    """The refusal comes from jinja2's sandbox (SecurityError), not from our own checks."""
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    with pytest.raises(jinja2.exceptions.SecurityError):
        ImmutableSandboxedEnvironment().from_string("{{ ''.__class__.__mro__[1].__subclasses__() }}").render()
    chat = ChatTemplate("{{ ''.__class__.__mro__[1].__subclasses__() }}", "t.jinja", {})
    with pytest.raises(ConfigError, match="t.jinja: the chat template was stopped by the sandbox"):
        chat.render([])


def test_no_template_or_no_end_of_turn_is_one_line_exit_2(tmp_path, bpe, capsys):
    d = _chat_dir(tmp_path / "none", bpe)
    (d / "tokenizer_config.json").write_text(json.dumps({"eos_token": "<|im_end|>"}))
    assert main(["generate", str(d), "--chat", "--prompt", "hi", "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "has no chat template" in err[0], err
    d = _chat_dir(tmp_path / "noeot", bpe, template="{{ messages[0].content }}", eos="</s>")  # no such token
    assert main(["generate", str(d), "--chat", "--prompt", "hi", "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no end-of-turn token" in err[0], err
    assert main(["generate", str(d), "--system", "x", "--prompt", "hi", "--no-progress"]) == 2
    assert "add --chat" in capsys.readouterr().err


def test_the_template_travels_through_runs_checkpoints_and_convert(tmp_path, bpe, capsys):
    src = _chat_dir(tmp_path / "src", bpe, as_jinja=True)
    data = tmp_path / "data.txt"
    data.write_text("".join(TEXTS))
    run = tmp_path / "run"
    assert main(["train", "--preset", "llama", "--data", str(data), "--tokenizer", str(src / "tokenizer.json"),
                 "--steps", "2", "--batch-size", "2", "--seq-len", "16", "--ckpt-every", "1", "--set",
                 f"vocab_size={bpe.get_vocab_size()}", "--set", "stats_every=0", "--out", str(run),
                 "--no-progress", "--device", "cpu"]) == 0
    hf, back = tmp_path / "hf", tmp_path / "back"
    assert main(["convert", "--to-hf", str(run), "--out", str(hf), "--no-progress"]) == 0
    assert main(["convert", "--from-hf", str(hf), "--out", str(back), "--no-progress"]) == 0
    init = tmp_path / "init"
    assert main(["train", "--init-from", str(hf), "--data", str(data), "--steps", "1", "--batch-size", "2",
                 "--seq-len", "16", "--set", "stats_every=0", "--out", str(init), "--no-progress",
                 "--device", "cpu"]) == 0
    retro = tmp_path / "retro"
    assert main(["retrofit", "--from", str(run), "--scope", "head", "--heal-steps", "0", "--out", str(retro),
                 "--seq-len", "16", "--batch-size", "2", "--calib-tokens", "256", "--calib-steps", "2",
                 "--eval-tokens", "256", "--device", "cpu", "--no-progress"]) == 0
    capsys.readouterr()
    ckpt = sorted((run / "checkpoints").glob("step_*"))[-1]
    for d in (run, ckpt, hf, back, init, retro):
        for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
            assert (d / name).read_bytes() == (src / name).read_bytes(), (d, name)
        assert main(["generate", str(d), "--chat", "--prompt", "hi", "--max-new-tokens", "2", "--no-progress"]) == 0
    assert capsys.readouterr().err == ""
