"""The stabilizer mechanisms on a CUDA device: the same function as on CPU (QK-norm types through the kernel
dispatch, sigmaReparam), and training with Muon / QK-clip stays finite and clipped. Needs a GPU (skipped
otherwise); tolerances are fp32 CPU-vs-GPU matmul differences."""
import pytest
import torch

import qknorm
from qknorm.train import TrainConfig
from qknorm.train.loop import train
from qknorm.data.tokens import load_tokens

pytestmark = pytest.mark.gpu


@pytest.mark.parametrize("over", [dict(qk_norm="head", qk_norm_type="l2"), dict(qk_norm="full", qk_norm_type="l2"),
                                  dict(qk_norm="head", qk_norm_type="layernorm"), dict(sigma_reparam=True),
                                  dict(qk_norm="full")])
def test_forward_and_backward_match_cpu(over):
    cfg = qknorm.get_config("llama", "debug", **over)
    torch.manual_seed(0)
    cpu = qknorm.TransformerLM(cfg)
    gpu = qknorm.TransformerLM(cfg).cuda()
    gpu.load_state_dict(cpu.state_dict())
    ids = torch.randint(0, 256, (4, 64))
    a, b = cpu(ids), gpu(ids.cuda())
    torch.testing.assert_close(b.cpu(), a, rtol=1e-3, atol=1e-3)
    a.float().logsumexp(-1).mean().backward()
    b.float().logsumexp(-1).mean().backward()
    for (name, p), q in zip(cpu.named_parameters(), gpu.parameters()):
        torch.testing.assert_close(q.grad.cpu(), p.grad, rtol=1e-2, atol=1e-4, msg=name)


def test_muon_with_qk_clip_trains_on_cuda():
    r = train(qknorm.get_config("llama", "debug"), TrainConfig(optimizer="muon", qk_clip=20.0, steps=40, lr=5e-2,
                                                                batch_size=8, seq_len=64, stats_every=2,
                                                                eval_batches=1, progress=False, device="cuda"),
              load_tokens(max_bytes=200_000))
    assert not r.diverged and r.final_loss < r.init_loss - 1.0
    logits = [h.max_attn_logit for h in r.history if h.has_stats]
    assert max(logits) <= 2.5 * 20, logits
