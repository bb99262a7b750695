"""Training and validation windows cut from a 1-D token array (`Batcher`)."""

from __future__ import annotations

import numpy as np

from ..errors import ConfigError, DataError

__all__ = ["Batcher"]


def _check_int(name: str, value, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ConfigError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


class Batcher:
    """Random training windows and fixed evaluation windows from a 1-D token array.

    `batch(step)` returns ``(x, y)``, int64 tensors of shape ``(batch_size // world_size, seq_len)`` with
    ``y[:, t] = x[:, t + 1]`` in the token stream. The global batch of a step is `batch_size` windows whose
    start offsets are drawn uniformly from ``[0, n - seq_len - 1]`` by ``np.random.default_rng([seed,
    step])`` — a pure function of (seed, step, the tokens), so a resumed run needs no loader state. Rank
    `rank` takes the contiguous rows ``[rank * b, (rank + 1) * b)``, ``b = batch_size // world_size``, so
    concatenating the ranks' batches in rank order gives the single-process batch exactly.

    `name` is used in error messages (e.g. ``"validation split"``).
    """

    def __init__(
        self,
        tokens: np.ndarray,
        *,
        batch_size: int,
        seq_len: int,
        seed: int,
        rank: int = 0,
        world_size: int = 1,
        name: str = "token data",
    ):
        self.batch_size = _check_int("batch_size", batch_size, 1)
        self.seq_len = _check_int("seq_len", seq_len, 1)
        self.seed = _check_int("seed", seed, 0)
        self.world_size = _check_int("world_size", world_size, 1)
        self.rank = _check_int("rank", rank, 0)
        if self.rank >= self.world_size:
            raise ConfigError(f"rank must be in [0, world_size={self.world_size}), got {self.rank}")
        if self.batch_size % self.world_size:
            raise ConfigError(
                f"batch_size (the global batch, {self.batch_size}) must be divisible by the number of"
                f" processes ({self.world_size})"
            )
        if getattr(tokens, "ndim", None) != 1:
            raise DataError(f"{name}: expected a 1-D token array, got shape {getattr(tokens, 'shape', None)}")
        self.tokens = tokens
        self.name = name
        self.n_tokens = int(len(tokens))
        if self.n_tokens < self.seq_len + 1:
            raise DataError(
                f"{name}: {self.n_tokens} tokens is shorter than one training sequence"
                f" (seq_len={self.seq_len} needs at least {self.seq_len + 1} tokens)"
            )
        self.local_batch_size = self.batch_size // self.world_size

    def _local(self, offsets: np.ndarray) -> np.ndarray:
        b = self.local_batch_size
        return offsets[self.rank * b : (self.rank + 1) * b]

    def _gather(self, offsets: np.ndarray):
        import torch

        idx = offsets[:, None] + np.arange(self.seq_len + 1)
        windows = torch.from_numpy(np.asarray(self.tokens[idx], dtype=np.int64))
        return windows[:, :-1].contiguous(), windows[:, 1:].contiguous()

    def global_offsets(self, step: int) -> np.ndarray:
        """Start offsets of the `batch_size` windows of the global batch of `step` (all ranks)."""
        step = _check_int("step", step, 0)
        rng = np.random.default_rng([self.seed, step])
        return rng.integers(0, self.n_tokens - self.seq_len, size=self.batch_size, dtype=np.int64)

    def batch(self, step: int):
        """This rank's ``(x, y)`` of the global batch of `step`."""
        return self._gather(self._local(self.global_offsets(step)))

    def val_batches(self, n_batches: int) -> list:
        """`n_batches` fixed evaluation batches (this rank's rows): ``n_batches * batch_size`` windows whose
        start offsets are spread evenly over the whole token array (``np.linspace`` from the first to the
        last possible offset, rounded), independent of the seed. Windows overlap when the array is short."""
        n_batches = _check_int("n_batches", n_batches, 1)
        offsets = np.linspace(0, self.n_tokens - self.seq_len - 1, num=n_batches * self.batch_size)
        offsets = np.rint(offsets).astype(np.int64).reshape(n_batches, self.batch_size)
        return [self._gather(self._local(row)) for row in offsets]
