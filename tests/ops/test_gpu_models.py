"""Whole models on the fused kernel, forward and backward, against a float64 copy of the same model:
- every preset (debug size) with qk_backend "triton" vs the same model with the PyTorch reference path;
- `qknorm.patch_hf` inside transformers' Qwen3, OLMo 2 and Gemma 3 vs the unpatched models;
- torch.compile with fullgraph=True (any graph break fails) of every preset on the kernel.
Rule, on the logits and on every parameter's gradient: max |path - float64| <= 2 x max |reference path in the
same dtype - float64| + ATOL x max |float64|.

On a CUDA GPU (`pytest -m gpu`): every preset and family in fp32 and bf16, and every preset compiled with
Inductor in bf16 (a graph break does not depend on the dtype; Inductor's compile time does). Without one
the same code runs a subset through the Triton interpreter in fp32 (CPU_SUBSET below; torch.compile with the
aot_eager backend, which traces forward and backward the same way but generates no kernels).
"""
import copy

import pytest
import torch
import torch.nn.functional as F

import qknorm
from qknorm.config_variants import fused_kernel_serves
from helpers.hf_models import make_hf

pytest.importorskip("triton")
transformers = pytest.importorskip("transformers")

HAS_CUDA = torch.cuda.is_available()
DEV = "cuda" if HAS_CUDA else "cpu"
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
ATOL = {torch.float32: 1e-5, torch.bfloat16: 1e-2}  # x max |float64 reference|
B, T = (2, 129) if HAS_CUDA else (1, 21)  # longer than the debug presets' sliding window (16)
# the presets whose every layer the fused kernel serves (the others' QK-norm runs in PyTorch: qk_backend='triton'
# is refused for them); compiled with fullgraph: those without experts (their loop over the chosen experts is
# data-dependent, a graph break by design)
PRESETS = tuple(p for p in qknorm.PRESETS if fused_kernel_serves(qknorm.get_config(p, "debug")))
COMPILE_PRESETS = tuple(p for p in PRESETS if not qknorm.get_config(p, "debug").n_experts)
HF_FAMILIES = ("qwen3", "olmo2", "gemma3")
COMPILE_DTYPES = ("bf16",) if HAS_CUDA else ("fp32",)  # graph breaks do not depend on the dtype: one compile each
CPU_SUBSET = {("preset", "olmo2", "fp32"), ("preset", "gemma3", "fp32"), ("hf", "qwen3", "fp32"),
              ("compile", "olmo2", "fp32")}


def _params(kind, names, dtypes=tuple(DTYPES)):
    for name in names:
        for dt in dtypes:
            on_cpu = not HAS_CUDA and (kind, name, dt) in CPU_SUBSET
            yield pytest.param(name, dt, marks=[] if on_cpu else [pytest.mark.gpu], id=f"{name}-{dt}")


@torch.no_grad()
def _randomize_vectors(model, seed=0):
    """Norm gains (Gemma offsets) and biases off their init, so a wrong weight, offset or cast shows."""
    g = torch.Generator().manual_seed(seed)
    for p in model.parameters():
        if p.ndim == 1:
            p.add_(0.3 * torch.randn(p.shape, generator=g).to(p.dtype))
    return model


def _fwd_bwd(model, ids, hf=False):
    model.zero_grad(set_to_none=True)
    logits = model(input_ids=ids).logits if hf else model(ids)  # (B, T, V)
    F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), ids[:, 1:].flatten()).backward()
    return [("logits", logits.detach())] + [(n, p.grad) for n, p in model.named_parameters()]


def _check(got, eager, ref, dtype):
    for (name, a), (_, e), (_, r) in zip(got, eager, ref):
        assert a is not None and torch.isfinite(a).all(), name
        r = r.double()
        err, err_eager = (a.double() - r).abs().max().item(), (e.double() - r).abs().max().item()
        atol = ATOL[dtype] * r.abs().max().item()
        assert err <= 2 * err_eager + atol, f"{name}: {err:.3g} > 2 x reference path {err_eager:.3g} + {atol:.3g}"


def _ours(preset, backend, dtype, state=None):
    torch.manual_seed(0)
    m = qknorm.TransformerLM(qknorm.get_config(preset, "debug", qk_backend=backend), device=DEV, dtype=dtype)
    if state is None:
        _randomize_vectors(m)
    else:
        m.load_state_dict(state)
    return m.train()


def _ids(vocab):
    return torch.randint(0, vocab, (B, T), generator=torch.Generator().manual_seed(3)).to(DEV)


@pytest.mark.parametrize("preset,dtype", list(_params("preset", PRESETS)))
def test_preset_model_triton_vs_torch(preset, dtype):
    dt = DTYPES[dtype]
    ref = _ours(preset, "torch", torch.float64)
    ids = _ids(ref.config.vocab_size)
    got = _fwd_bwd(_ours(preset, "triton", dt, ref.state_dict()), ids)
    _check(got, _fwd_bwd(_ours(preset, "torch", dt, ref.state_dict()), ids), _fwd_bwd(ref, ids), dt)


@pytest.mark.parametrize("preset,dtype", list(_params("compile", COMPILE_PRESETS, COMPILE_DTYPES)))
def test_compiled_preset_model_has_no_graph_break(preset, dtype):
    """fullgraph=True raises on any graph break; the compiled model must match float64 like the eager one."""
    dt = DTYPES[dtype]
    ref = _ours(preset, "torch", torch.float64)
    ids = _ids(ref.config.vocab_size)
    model = _ours(preset, "triton", dt, ref.state_dict())
    torch._dynamo.reset()
    compiled = torch.compile(model, fullgraph=True, backend="inductor" if HAS_CUDA else "aot_eager")
    got = _fwd_bwd(compiled, ids)
    got = [(n.replace("_orig_mod.", ""), t) for n, t in got]
    _check(got, _fwd_bwd(_ours(preset, "torch", dt, ref.state_dict()), ids), _fwd_bwd(ref, ids), dt)


@pytest.mark.parametrize("family,dtype", list(_params("hf", HF_FAMILIES)))
def test_patch_hf_against_unpatched_transformers(family, dtype):
    dt = DTYPES[dtype]
    hf = make_hf(family, attn="sdpa").to(DEV).train()  # GQA, linear RoPE scaling, biases; Gemma 3 sliding + softcap
    ids = _ids(hf.config.vocab_size)
    ref = _fwd_bwd(copy.deepcopy(hf).double(), ids, hf=True)
    eager = _fwd_bwd(copy.deepcopy(hf).to(dt), ids, hf=True)
    patched = qknorm.patch_hf(copy.deepcopy(hf).to(dt), backend=None if HAS_CUDA else "triton")
    specs = [m._qknorm_spec for m in patched.modules() if "_qknorm_spec" in m.__dict__]
    assert len(specs) == hf.config.num_hidden_layers
    _check(_fwd_bwd(patched, ids, hf=True), eager, ref, dt)


def test_cpu_subset_is_in_the_matrix():
    names = {"preset": PRESETS, "compile": COMPILE_PRESETS, "hf": HF_FAMILIES}
    assert all(name in names[kind] and dt in DTYPES for kind, name, dt in CPU_SUBSET)
