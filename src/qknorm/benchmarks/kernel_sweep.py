"""Launch-config sweep of our two kernels on one (shape, scope): each forward and backward config timed alone,
the built-in table's choice marked. Read it beside the main table: a config that beats the table's is a lead
for default_config (the table itself is changed only from a GPU measurement)."""
from __future__ import annotations

from .kernel_contenders import EPS, NORM_CAST, make_inputs
from .timing import Timer

FWD_CONFIGS = [(1, 2), (1, 4), (1, 8), (2, 4), (2, 8), (4, 8)]  # (tokens per program, warps)
BWD_CONFIGS = [(1, 4, None), (1, 8, None), (2, 8, None), (1, 16, None), (1, 8, 1), (1, 8, 2), (1, 4, 4)]
SMOKE_CONFIGS = ([(4, 4)], [(4, 8, None)])


def sweep(shape, scope: str, device: str, timer: Timer) -> list:
    from ..ops import triton_qk_norm_rope as K

    B, T, H, Hkv, D = shape
    x = make_inputs(shape, scope, device)
    args = (x.q, x.k, x.qw, x.kw, x.cos, x.sin, EPS, scope, 0.0, NORM_CAST[scope])
    default = {kind: K.default_config(kind, H, Hkv, D) for kind in ("fwd", "bwd")}
    fwd_cfgs, bwd_cfgs = (FWD_CONFIGS, BWD_CONFIGS) if device == "cuda" else SMOKE_CONFIGS
    out = []
    for kind, cfgs in (("fwd", fwd_cfgs), ("bwd", bwd_cfgs)):
        for cfg in cfgs:
            kc = K.KernelConfig(*cfg)
            K.set_config_override(**{kind: kc})
            try:
                fn = (lambda: K.qk_norm_rope_fwd(*args)) if kind == "fwd" else (
                    lambda: K.qk_norm_rope_bwd(x.gq, x.gk, *args))
                out.append({"shape": list(shape), "scope": scope, "kind": kind, "block_t": kc.block_t,
                            "num_warps": kc.num_warps, "programs_per_sm": kc.programs_per_sm, "ms": timer(fn),
                            "default": kc == default[kind]})
            except Exception as e:  # noqa: BLE001
                out.append({"shape": list(shape), "scope": scope, "kind": kind, "config": list(cfg),
                            "error": repr(e)[:200]})
            finally:
                K.set_config_override()
    return out
