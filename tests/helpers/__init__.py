"""Test helpers, imported as `helpers.<module>` from every test directory (tests/ is on the path):

  greedy.py      greedy decoding compared with a reference up to its first near-tie (no knife-edge argmax)
  hf_models.py   tiny random HF models of every family, built offline
  load.py        timeouts scaled by the machine's load, and polling waits, for tests that wait on processes
  olmo_core_models.py  OLMo-core models from its own builders, saved as its HF export and trainer checkpoint
  ops_inputs.py  inputs and an HF-style float64 oracle for the QK-norm + RoPE op
  peaked.py      our models with weights far from init (peaked logits) for generation tests
  ranks.py       forked gloo ranks and torchrun subprocesses for distributed tests
  tp_training.py a plain training loop for tensor-parallel vs one-process comparisons
"""
