"""The tensor-parallel tests fork their ranks from the test process (tests/helpers/ranks.py). DTensor's
first distribute call imports torch._dynamo lazily (~3-6 s on a 2-core machine); importing it here, once, lets
every forked rank inherit it instead of paying that per rank and per test."""
import torch._dynamo  # noqa: F401
import torch.distributed.tensor.parallel  # noqa: F401
