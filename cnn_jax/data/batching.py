"""Batches from an in-memory split: shuffled training batches by step, padded eval batches.

A training batch is a pure function of (seed, step): epoch e uses the permutation drawn from
(seed, e), and step s takes slice s mod steps_per_epoch of it. So a run resumed at step s sees
exactly the batches an uninterrupted run would, with no iterator state to save.
"""

import functools
from typing import Iterator

import numpy as np

from cnn_jax.data.dataset import Normalizer, Split


def steps_per_epoch(num_examples: int, batch_size: int) -> int:
  """Full training batches per epoch; the last partial batch of each epoch is skipped.

  Skipping (not padding) is right for training: every batch has the same size, and the skipped
  examples differ from epoch to epoch because the order is reshuffled.
  """
  return max(1, num_examples // batch_size)


@functools.lru_cache(maxsize=2)
def _epoch_order(seed: int, epoch: int, num_examples: int) -> np.ndarray:
  # Cached: all steps of an epoch share one permutation, computed once.
  return np.random.default_rng([seed, epoch]).permutation(num_examples)


def train_indices(num_examples: int, batch_size: int, seed: int, step: int) -> np.ndarray:
  """Returns the example indices int32 [B] of training batch number `step`."""
  per_epoch = steps_per_epoch(num_examples, batch_size)
  epoch, index = divmod(step, per_epoch)
  order = _epoch_order(seed, epoch, num_examples)
  # A split smaller than one batch wraps around so the batch shape never changes.
  return np.take(order, np.arange(index * batch_size, (index + 1) * batch_size),
                 mode='wrap').astype(np.int32)


def train_batch(split: Split, normalizer: Normalizer | None, batch_size: int, seed: int,
                step: int) -> dict[str, np.ndarray]:
  """Returns training batch number `step`: {'image': float32 [B, H, W, C], 'label': int32 [B]};
  with `normalizer` None, the images as the split holds them (uint8, to be normalised later)."""
  take = train_indices(len(split), batch_size, seed, step)
  images = split.images[take]
  return {'image': images if normalizer is None else normalizer(images),
          'label': split.labels[take]}


def eval_batches(split: Split, normalizer: Normalizer,
                 batch_size: int) -> Iterator[dict[str, np.ndarray]]:
  """Yields every example exactly once, in order, in batches of exactly `batch_size`.

  The last batch is padded with copies of example 0 and carries `mask` [B] (1.0 = real example,
  0.0 = padding), so one compiled eval step serves every batch and padding never counts.
  """
  for start in range(0, len(split), batch_size):
    stop = min(start + batch_size, len(split))
    take = np.arange(start, start + batch_size)
    mask = (take < stop).astype(np.float32)
    take = np.where(take < stop, take, 0)
    yield {'image': normalizer(split.images[take]), 'label': split.labels[take], 'mask': mask}
