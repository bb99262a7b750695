"""End-to-end training-step benchmark: qknorm's OLMo 2 model vs HF Olmo2ForCausalLM, measured in one run.

The shape is the anchor of shared/tools/hf_train_gpu.py: 372M parameters (d=1024, 16 layers, 16 heads of 64,
SwiGLU 4096, vocab 50304), B=8, T=2048, bf16 weights, fused AdamW, one step = forward + backward + optimizer.
Variants (pick with --variants):
  hf, hf_compile, hf_liger           HF transformers eager / torch.compile / Liger-Kernel OLMo 2 patch
  ours, ours_compile                 qknorm TransformerLM (fused Triton QK-norm+RoPE on CUDA), eager / compiled
  ours_compile_noqk                  the same with qk_norm="none": what QK-norm costs in our step
Prints a markdown table (ms/step, tokens/s, peak GB, speed vs HF eager / HF compile / HF Liger) and, with --out
(or $OUT), writes train_step.json + train_step.md there.

    qknorm bench train --out $OUT                        # on a GPU (or python bench/bench_train_gpu.py)
    qknorm bench train --cpu-smoke                       # tiny shapes on CPU, eager variants: checks that it runs
"""
from __future__ import annotations

import datetime
import json
import os
import sys
import time

import torch
import torch.nn.functional as F

import qknorm

ALL = ("hf", "hf_compile", "hf_liger", "ours", "ours_compile", "ours_compile_noqk")
SMOKE = ("hf", "ours")  # torch.compile on CPU takes about a minute per variant: not for a smoke check
REFS = (("hf", "HF"), ("hf_compile", "HF compile"), ("hf_liger", "HF Liger"))


def build_hf(variant, shape, device, dtype):
    from transformers import Olmo2Config, Olmo2ForCausalLM

    cfg = Olmo2Config(vocab_size=shape["vocab"], hidden_size=shape["d"], intermediate_size=shape["ff"],
                      num_hidden_layers=shape["L"], num_attention_heads=shape["H"], num_key_value_heads=shape["H"],
                      max_position_embeddings=4096, rms_norm_eps=1e-6, rope_theta=5e5, tie_word_embeddings=False,
                      pad_token_id=1, eos_token_id=2)
    torch.manual_seed(0)
    m = Olmo2ForCausalLM._from_config(cfg, attn_implementation="sdpa", dtype=dtype).to(device)
    if variant == "hf_liger":
        from liger_kernel.transformers import apply_liger_kernel_to_olmo2

        apply_liger_kernel_to_olmo2(model=m)
    if variant == "hf_compile":
        m.compile()

    def loss_fn(ids):
        return m(input_ids=ids, labels=ids).loss

    return m, loss_fn


def build_ours(variant, shape, device, dtype):
    over = dict(vocab_size=shape["vocab"], d_model=shape["d"], d_ff=shape["ff"], n_layers=shape["L"],
                n_heads=shape["H"], n_kv_heads=shape["H"])
    if variant.endswith("noqk"):
        over["qk_norm"] = "none"
    cfg = qknorm.get_config("olmo2", "debug", **over)
    torch.manual_seed(0)
    m = qknorm.TransformerLM(cfg, device=device, dtype=dtype)

    def loss(ids):
        logits = m(ids[:, :-1])  # (B, T-1, V), HF shifts the same way
        return F.cross_entropy(logits.flatten(0, 1).float(), ids[:, 1:].flatten())

    return m, (torch.compile(loss) if "compile" in variant else loss)


def time_variant(variant, shape, device, dtype, steps, warmup):
    build = build_hf if variant.startswith("hf") else build_ours
    m, loss_fn = build(variant, shape, device, dtype)
    m.train()
    fused = device == "cuda"
    opt = torch.optim.AdamW(m.parameters(), lr=1e-4, fused=fused)
    ids = torch.randint(0, shape["vocab"], (shape["B"], shape["T"]), device=device)

    def step():
        loss = loss_fn(ids)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss

    t0 = time.perf_counter()
    for _ in range(warmup):
        step()
    sync(device)
    compile_s = time.perf_counter() - t0
    times = []
    for _ in range(steps):
        t = time.perf_counter()
        step()
        sync(device)
        times.append(time.perf_counter() - t)
    times.sort()
    med = times[len(times) // 2]
    peak = torch.cuda.max_memory_allocated() / 1e9 if device == "cuda" else float("nan")
    n_params = sum(p.numel() for p in m.parameters())
    del m, opt
    if device == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    return dict(ms=med * 1e3, tok_s=shape["B"] * shape["T"] / med, peak_GB=peak, warmup_s=compile_s,
                params_M=n_params / 1e6)


def sync(device):
    if device == "cuda":
        torch.cuda.synchronize()


def main(argv=None):
    from ..cli._common import OneLineParser

    ap = OneLineParser(prog="qknorm bench train", description=__doc__.split("\n")[0])
    ap.add_argument("--variants", default=None, help=f"comma list (default: all; --cpu-smoke: {','.join(SMOKE)})")
    ap.add_argument("--out", default=os.environ.get("OUT") or None,
                    help="folder for train_step.json and .md (default $OUT; neither: print only)")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--cpu-smoke", action="store_true", help="tiny shapes on CPU, fp32 (checks the script runs)")
    args = ap.parse_args(argv)
    if args.cpu_smoke:
        device, dtype = "cpu", torch.float32
        shape = dict(vocab=256, d=64, ff=128, L=2, H=4, B=2, T=32)
        args.steps, args.warmup = 2, 1
        args.variants = args.variants or ",".join(SMOKE)
    else:
        device, dtype = "cuda", torch.bfloat16
        shape = dict(vocab=50304, d=1024, ff=4096, L=16, H=16, B=8, T=2048)
    res = dict(date=datetime.date.today().isoformat(), torch=torch.__version__, shape=shape,
               device=torch.cuda.get_device_name() if device == "cuda" else "cpu", variants={})
    try:
        import transformers

        res["transformers"] = transformers.__version__
    except ImportError:
        pass
    variants = (args.variants or ",".join(ALL)).split(",")
    bad = [v for v in variants if v not in ALL]
    if bad:
        raise qknorm.ConfigError(f"--variants {','.join(bad)} not allowed; choose from: {', '.join(ALL)}")
    for v in variants:
        try:
            r = time_variant(v, shape, device, dtype, args.steps, args.warmup)
            res["variants"][v] = r
            print(f"{v:20s} {r['ms']:8.1f} ms/step {r['tok_s']:>10,.0f} tok/s peak {r['peak_GB']:.1f} GB "
                  f"(warmup {r['warmup_s']:.0f} s)", flush=True)
        except Exception as e:  # a missing optional package (liger) must not stop the others
            res["variants"][v] = dict(error=repr(e)[:300])
            print(f"{v:20s} error {repr(e)[:200]}", flush=True)
    table = render(res)
    print(table)
    if args.out:
        os.makedirs(args.out, exist_ok=True)
        with open(os.path.join(args.out, "train_step.json"), "w") as f:
            json.dump(res, f, indent=1)
        with open(os.path.join(args.out, "train_step.md"), "w") as f:
            f.write(table + "\n")
        print(f"wrote {os.path.join(args.out, 'train_step.md')}")
    return 0


def render(res):
    v = res["variants"]
    refs = [(k, label, v[k]["ms"]) for k, label in REFS if "ms" in v.get(k, {})]
    lines = [f"Training step, {res['device']}, torch {res['torch']}, transformers {res.get('transformers')}, "
             f"{res['date']}; shape {res['shape']}", "",
             "| variant | ms/step | tokens/s | peak GB | " + " | ".join(f"speed vs {lb}" for _, lb, _ in refs) + " |",
             "|---|---|---|---|" + "---|" * len(refs)]
    for name, r in v.items():
        if "error" in r:
            lines.append(f"| {name} | error: {r['error'][:80]} | | |" + " |" * len(refs))
            continue
        lines.append(f"| {name} | {r['ms']:.1f} | {r['tok_s']:,.0f} | {r['peak_GB']:.1f} | " +
                     " | ".join(f"{ms / r['ms']:.2f}x" for _, _, ms in refs) + " |")
    if "ours_compile" in v and "ours_compile_noqk" in v and "ms" in v["ours_compile"] and "ms" in v["ours_compile_noqk"]:
        qk = v["ours_compile"]["ms"] / v["ours_compile_noqk"]["ms"] - 1
        lines.append(f"\nQK-norm share of our compiled step: {100 * qk:+.1f}%")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
