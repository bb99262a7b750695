"""Why compiled sigma_reparam weights differ from eager ones by more than 1e-5 (docs/study_speed.md).

    PYTHONPATH=src python bench/compile_sigma_reparam.py          # a cold compile: minutes on a loaded 2-core CPU

The llama debug model with sigma_reparam, the same init and batches, one AdamW step (lr 1e-2, weight decay 0.1)
eager and through torch.compile(model): the loss, the largest gradient difference (relative to each matrix's
largest gradient), the power iteration's u/v, and the weights after the step; then, in the matrix with the worst
weight difference, how many elements differ by more than 1e-5 and what their gradients were (against AdamW's eps).
"""
import torch
import torch.nn.functional as F

import qknorm
from qknorm.data.tokens import load_tokens

torch.set_num_threads(1)


def main() -> None:
    data = load_tokens(max_bytes=50_000)
    x = torch.tensor(data.train[:2 * 17].astype("int64")).view(2, 17)  # (B, T + 1)
    torch.manual_seed(0)
    cfg = qknorm.get_config("llama", "debug").replace(sigma_reparam=True)
    eager, comp = qknorm.TransformerLM(cfg), qknorm.TransformerLM(cfg)
    comp.load_state_dict(eager.state_dict())
    runs = []
    for model, call in ((eager, eager), (comp, torch.compile(comp, dynamic=False))):
        opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)
        logits = call(x[:, :-1])  # (B, T, V)
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), x[:, 1:].reshape(-1))
        loss.backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters()}
        opt.step()
        runs.append((loss.item(), grads, dict(model.named_parameters()), dict(model.named_buffers())))
    (la, ga, wa, ba), (lb, gb, wb, bb) = runs
    g_rel = max(((ga[n] - gb[n]).abs().max() / ga[n].abs().max()).item() for n in ga)
    uv = max((ba[n] - bb[n]).abs().max().item() for n in ba if n.endswith((".u", ".v")))
    worst_d, worst = max(((wa[n] - wb[n]).abs().max().item(), n) for n in wa)
    print(f"torch {torch.__version__}; loss eager {la:.7f} compiled {lb:.7f}; gradients differ by up to {g_rel:.2e} of "
          f"each matrix's largest; u/v by up to {uv:.2e}; weights after one step by up to {worst_d:.2e} ({worst})")
    d = (wa[worst] - wb[worst]).abs()
    big = d > 1e-5
    i = d.argmax()
    print(f"{worst}: {int(big.sum())} of {d.numel()} elements differ by > 1e-5; the worst one's gradient eager "
          f"{ga[worst].flatten()[i].item():.3e}, compiled {gb[worst].flatten()[i].item():.3e} (AdamW eps 1e-8; the "
          f"matrix's largest |gradient| {ga[worst].abs().max().item():.3e})")


if __name__ == "__main__":
    main()
