"""The catalogue: the QK-norm design of every family qknorm reads, from each family's published config.json.

    from qknorm.catalog import entries, render
    print(render([e.row() for e in entries()], "markdown"))      # `qknorm catalog`

The configs are bundled (catalog/configs/*.json, a few KB each; no download): one published model per family,
its config.json as on the Hugging Face Hub plus `_source` (the repository) and `_verified` (which fields were
checked against which public copy of the published file, and which stay transcribed). Each is read by the
same translation `from_hf` uses (interop/hf_config.py), so a row says what qknorm itself would build: norm kind, gain,
scope, place relative to RoPE, which layers carry it, eps, weight offset and cast, block placement, attention
pattern (windows, chunks, NoPE layers), RoPE, softcaps, output scale and q/k/v clamps, and the mixture-of-
experts layers (router rule, shared expert).

`small_config` shrinks an entry to a CPU-sized model of the same design (depth, width, vocabulary, windows),
so that `qknorm catalog --build NAME --out DIR` writes a checkpoint `qknorm inspect DIR` reads.
"""
from __future__ import annotations

import dataclasses
import html
import json
from pathlib import Path
from typing import List, Optional, Sequence

from ..config import CHUNKED, SLIDING, ModelConfig, layer_has_qk_norm
from ..config_moe import layer_is_moe
from ..errors import ConfigError
from ..interop.hf_config import config_from_hf

__all__ = ["CONFIG_DIR", "Entry", "Row", "entries", "read_entry", "render", "small_config"]

CONFIG_DIR = Path(__file__).parent / "configs"


@dataclasses.dataclass(frozen=True)
class Row:
    """One line of the table: every column a string."""

    family: str
    model: str
    qk_norm: str
    gain: str
    scope: str
    vs_rope: str
    layers: str
    eps: str
    weight: str
    block: str
    attention: str
    rope: str
    softcaps: str
    note: str


COLUMNS = ("family", "model", "QK-norm", "gain", "scope", "vs RoPE", "layers with it", "eps", "weight (cast)",
           "block", "attention", "RoPE", "softcaps / logit scale / clip", "note")


@dataclasses.dataclass(frozen=True)
class Entry:
    """A bundled config: its file stem, the model it comes from, its model_type, what qknorm reads."""

    name: str
    source: str
    model_type: str
    config: ModelConfig
    note: str = ""

    def row(self) -> Row:
        return describe(self)


def read_entry(path: Path) -> Entry:
    """One bundled config.json as an Entry (CheckpointError naming the file if it does not read)."""
    raw = json.loads(Path(path).read_text())
    config, fam = config_from_hf(raw, source=str(path))
    return Entry(Path(path).stem, str(raw.get("_source", "")), fam.model_type, config)


def entries(directory: Optional[Path] = None) -> List[Entry]:
    """Every bundled config, by file name."""
    return [read_entry(p) for p in sorted(Path(directory or CONFIG_DIR).glob("*.json"))]


def _num(x: float) -> str:
    return f"{x:g}"


def describe(e: Entry) -> Row:
    c = e.config
    L = c.n_layers
    types = c.resolved_layer_types()
    on = c.qk_norm.value != "none"
    kind = {"rms": "RMSNorm", "layernorm": "LayerNorm (no bias)", "l2": "L2 + temperature"}[c.qk_norm_type.value]
    if on and c.qk_norm_gain.value == "none":
        kind = "weightless " + kind
    with_norm = sum(layer_has_qk_norm(c, i) for i in range(L))
    attn = []
    n_sliding, n_chunked = types.count(SLIDING), types.count(CHUNKED)
    if n_sliding:
        attn.append(f"sliding {c.sliding_window} on {n_sliding}/{L}")
    if n_chunked:
        attn.append(f"chunked {c.attention_chunk} on {n_chunked}/{L}")
    if len(types) - n_sliding - n_chunked:
        attn.append(f"full on {len(types) - n_sliding - n_chunked}/{L}")
    if c.nope_layers:
        attn.append(f"NoPE on {len(c.nope_layers)}/{L}" + (
            f" (temperature {_num(c.nope_attn_scale)}, floor {_num(c.nope_floor_scale)})"
            if c.nope_attn_scale is not None else ""))
    if c.query_pre_attn_scalar is not None and c.query_pre_attn_scalar != c.head_dim:
        attn.append(f"scale {_num(c.query_pre_attn_scalar)}^-0.5")
    rope = [f"theta {_num(c.rope_theta)}"]
    if c.rope_scaling is not None:
        rope.append(f"{c.rope_scaling.rope_type.value} x{_num(c.rope_scaling.factor)}")
    if c.rope_local_theta is not None:
        rope.append(f"sliding theta {_num(c.rope_local_theta)}")
    rope.append("interleaved" if c.rope_interleaved else "rotate-half")
    if c.rope_fraction != 1:
        rope.append(f"{_num(c.rope_fraction)} of each head")
    caps = [f"attn {_num(c.attn_softcap)}" if c.attn_softcap else "", f"final {_num(c.final_softcap)}"
            if c.final_softcap else "", f"logits x{_num(c.logit_scale)}" if c.logit_scale != 1 else "",
            f"q/k/v clamped to ±{_num(c.clip_qkv)}" if c.clip_qkv is not None else ""]
    ln = " (no gain, no bias)" if not c.layernorm_weight else "" if c.layernorm_bias else " (no bias)"
    block = c.placement.value + ("" if c.norm_type.value == "rmsnorm" else f", LayerNorm{ln}")
    n_moe = sum(layer_is_moe(c, i) for i in range(L))
    if n_moe:
        block += (f", MoE top-{c.experts_per_token} of {c.n_experts}{' renormalized' if c.norm_topk_prob else ''}"
                  + (", sigmoid on inputs" if c.moe_router.value == "sigmoid" else "")
                  + (" + shared expert" if c.moe_shared_expert else "") + ("" if n_moe == L else f" on {n_moe}/{L}"))
    weight = ("1 + w" if c.norm_offset else "w") + (f" ({c.norm_cast.value})" if c.norm_type.value == "rmsnorm"
                                                     else " (fp32)")
    if not c.layernorm_weight:
        weight = "none (fp32)"
    dash = "—"
    return Row(
        family=e.model_type, model=e.source or e.name, qk_norm=kind if on else "none",
        gain=c.qk_norm_gain.value.replace("_", " ") if on else dash,
        scope={"head": "per head", "full": "full width"}.get(c.qk_norm.value, dash),
        vs_rope=("after" if c.qk_norm_after_rope else "before") if on else dash,
        layers=(("all" if with_norm == L else f"RoPE layers ({with_norm}/{L})") if on else dash),
        eps=_num(c.norm_eps), weight=weight, block=block, attention=", ".join(attn), rope=", ".join(rope),
        softcaps=", ".join(x for x in caps if x) or dash, note=e.note)


def render(rows: Sequence[Row], fmt: str = "markdown") -> str:
    """The table as Markdown, HTML or JSON (a list of objects keyed by Row's field names)."""
    cells = [list(dataclasses.astuple(r)) for r in rows]
    if fmt == "json":
        return json.dumps([dataclasses.asdict(r) for r in rows], indent=1) + "\n"
    if fmt == "html":
        head = "".join(f"<th>{html.escape(h)}</th>" for h in COLUMNS)
        body = "\n".join("<tr>" + "".join(f"<td>{html.escape(v)}</td>" for v in row) + "</tr>" for row in cells)
        return f"<table>\n<thead><tr>{head}</tr></thead>\n<tbody>\n{body}\n</tbody>\n</table>\n"
    if fmt != "markdown":
        raise ConfigError(f"format={fmt!r} is not allowed; choose one of: markdown, html, json")
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(v.replace("|", "\\|") for v in row) + " |" for row in cells]
    return "\n".join(lines) + "\n"


def small_config(config: ModelConfig, *, n_layers: int = 8, d_model: int = 64, n_heads: int = 4, head_dim: int = 16,
                 d_ff: int = 128, vocab_size: int = 256, window: int = 16) -> ModelConfig:
    """The same QK-norm, block and attention design at a CPU size: the first `n_layers` layers (their types and
    NoPE flags kept), GQA ratio kept where it divides `n_heads`, windows and chunks cut to `window`."""
    c = config
    L = min(n_layers, c.n_layers)
    ratio = c.n_heads // c.n_kv_heads
    n_kv = n_heads // ratio if ratio <= n_heads and n_heads % ratio == 0 else 1
    changes = dict(n_layers=L, d_model=d_model, n_heads=n_heads, n_kv_heads=n_kv, head_dim=head_dim, d_ff=d_ff,
                   vocab_size=vocab_size, max_seq_len=min(c.max_seq_len, 4096),
                   nope_layers=tuple(i for i in c.nope_layers if i < L))
    if c.layer_types is not None:
        changes["layer_types"] = c.layer_types[:L]
    if c.sliding_window is not None:
        changes["sliding_window"] = min(c.sliding_window, window)
    if c.attention_chunk is not None:
        changes["attention_chunk"] = min(c.attention_chunk, window)
    if c.query_pre_attn_scalar is not None:
        changes["query_pre_attn_scalar"] = head_dim
    if c.n_experts:  # at most 8 experts, half the MLP width unless as wide as it (OLMoE), top-k where it fits
        E, f = min(c.n_experts, 8), c.moe_d_ff
        changes.update(n_experts=E, experts_per_token=min(c.experts_per_token, E // 2 or 1),
                       moe_d_ff=None if f is None else d_ff if f == c.d_ff else d_ff // 2,
                       dense_layers=tuple(i for i in c.dense_layers if i < L))
    return c.replace(**changes)
