"""QK-norm retrofit at real size (bench/results/retrofit_135m_2026-12-07.md): a llama of SmolLM-135M's shape.

    python bench/bench_retrofit_135m_cpu.py model OUT_DIR     # the HF directory: random weights, seed 0
    OMP_NUM_THREADS=1 /usr/bin/time -v qknorm retrofit --from OUT_DIR --scope head --heal-steps 0 --out R
    OMP_NUM_THREADS=1 python bench/bench_retrofit_135m_cpu.py heal OUT_DIR [STEPS]   # healing updates alone

`heal` times the default healing updates (distill, batch 8 x 128, AdamW) in process CPU time, without the
held-out evaluations (their cost is the retrofit's 'held-out KL' stage), and prints each step as it ends.
"""
import resource
import sys
import time


def model(out: str) -> None:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(hidden_size=576, num_hidden_layers=30, num_attention_heads=9, num_key_value_heads=3,
                      intermediate_size=1536, vocab_size=49152, tie_word_embeddings=True,
                      max_position_embeddings=2048)
    m = LlamaForCausalLM(cfg)
    print(f"{sum(p.numel() for p in m.parameters()):,} parameters")
    m.save_pretrained(out)


def heal_steps(src_dir: str, steps: int) -> None:
    from qknorm.data.tokens import load_tokens
    from qknorm.pretrained import open_model
    from qknorm.retrofit.config import RetrofitConfig
    from qknorm.retrofit.heal import heal
    from qknorm.retrofit.insert import insert_qk_norm

    original = open_model(src_dir).model.float().eval().requires_grad_(False)
    tokens = load_tokens(None)
    cfg = RetrofitConfig(heal_steps=steps)
    model = insert_qk_norm(original, "head", share=True)
    t, w = time.process_time(), time.perf_counter()

    def tick(n):
        print(f"step done: CPU {time.process_time() - t:.1f} s, wall {time.perf_counter() - w:.1f} s", flush=True)

    _, r = heal(model, original, tokens.train, cfg.heal_config(), objective="distill",
                evaluate=lambda m: (0.0, 0.0), eval_at=(), first=(0.0, 0.0), tick=tick)
    print(f"{steps} steps: CPU {time.process_time() - t:.1f} s; losses {[round(s.loss, 4) for s in r.steps]}; "
          f"peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB")


if __name__ == "__main__":
    if sys.argv[1] == "model":
        model(sys.argv[2])
    else:
        heal_steps(sys.argv[2], int(sys.argv[3]) if len(sys.argv) > 3 else 10)
