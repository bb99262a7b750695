#!/usr/bin/env python
# usage: PYTHONPATH=src python bench/bench_families_at_size_cpu.py OUT_DIR   (writes a ~1.1 GB HF checkpoint to OUT_DIR)
"""EXAONE 4.0 1.2B's published shape (LGAI-EXAONE/EXAONE-4.0-1.2B widths, vocabulary, GQA, llama3 RoPE), 2 of its
30 layers, hybrid windows forced on so the NoPE global layer is exercised: HF save -> qknorm from_hf -> logits."""
import json, resource, sys, time, warnings
import torch, transformers
import qknorm
warnings.filterwarnings("ignore")
transformers.logging.set_verbosity_error()
out = sys.argv[1]
cfg = transformers.Exaone4Config(vocab_size=102400, hidden_size=2048, intermediate_size=4096, num_hidden_layers=2,
    num_attention_heads=32, num_key_value_heads=8, head_dim=64, rms_norm_eps=1e-5, max_position_embeddings=65536,
    rope_theta=1e6, rope_scaling={"rope_type": "llama3", "factor": 16.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
    "original_max_position_embeddings": 8192}, tie_word_embeddings=True, sliding_window=64,
    layer_types=["sliding_attention", "full_attention"])
cfg._attn_implementation = "sdpa"
torch.manual_seed(0)
hf = transformers.Exaone4ForCausalLM(cfg).eval()
with torch.no_grad():
    for n, p in hf.named_parameters():
        if p.ndim == 1: p.add_(0.3 * torch.randn_like(p))
n_params = sum(p.numel() for p in hf.parameters())
hf.save_pretrained(out, safe_serialization=True)
t0 = time.process_time()
ours = qknorm.from_hf(out)
t_load = time.process_time() - t0
ids = torch.randint(0, 102400, (1, 256), generator=torch.Generator().manual_seed(0))
with torch.no_grad():
    t0 = time.process_time(); a = ours(ids); t_ours = time.process_time() - t0
    t0 = time.process_time(); b = hf(input_ids=ids).logits; t_hf = time.process_time() - t0
rel = float((a.double() - b.double()).abs().max() / b.double().abs().max())
print(json.dumps(dict(params=n_params, nope_layers=list(ours.config.nope_layers), equal=bool(torch.equal(a, b)), rel=rel,
      load_cpu_s=round(t_load, 2), fwd_cpu_s_ours=round(t_ours, 2), fwd_cpu_s_hf=round(t_hf, 2),
      peak_rss_gb=round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2),
      torch=torch.__version__, transformers=transformers.__version__)))
