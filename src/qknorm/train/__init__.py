"""Training: token data and batches (`data`), the training loop, checkpoints.

Submodules are imported explicitly (``from qknorm.train.data import load_tokens``); importing this
package does not import torch or any optional dependency.
"""
