"""Test helpers, imported as `helpers.<module>` from every test directory (tests/ is on the path):

  hf_models.py   tiny random HF models of every family, built offline
  olmo_core_models.py  OLMo-core models from its own builders, saved as its HF export and trainer checkpoint
  ops_inputs.py  inputs and an HF-style float64 oracle for the QK-norm + RoPE op
  peaked.py      our models with weights far from init (peaked logits) for generation tests
  ranks.py       forked gloo ranks and torchrun subprocesses for distributed tests
  tp_training.py a plain training loop for tensor-parallel vs one-process comparisons
"""
