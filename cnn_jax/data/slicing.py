"""Parts of splits: slices in TFDS's syntax for the local sources ('train[:2%]', 'train[10%:]',
'test[:1000]', 'train[-500:]'), so a config's splits read the same on every source; and the
seeded hold-out that makes a validation split out of a training split."""

import re

import numpy as np

from cnn_jax.data.dataset import Split
from cnn_jax.errors import UserError

_SLICED = re.compile(r'(\w+)\[\s*(-?\d+%?)?\s*:\s*(-?\d+%?)?\s*\]')


def parse(split: str) -> tuple[str, slice | None]:
  """Returns (the split's name, the slice of it asked for, or None for all of it).

  Bounds stay as written: an int, or a percentage as a str ending in '%'.

  Raises:
    UserError: brackets that are not one [start:stop] of counts or percentages.
  """
  if '[' not in split:
    return split, None
  match = _SLICED.fullmatch(split.strip())
  if not match:
    raise UserError(f'split {split!r}: write NAME or NAME[START:STOP], with counts or '
                    "percentages, e.g. 'train[:2%]', 'train[10%:]', 'test[:1000]'.")
  name, start, stop = match.groups()
  bound = lambda text: text if text is None or text.endswith('%') else int(text)
  return name, slice(bound(start), bound(stop))


def _index(bound, count: int) -> int | None:
  if bound is None or isinstance(bound, int):
    return bound
  return int(round(count * int(bound[:-1]) / 100))  # Percentages round to the nearest example.


def take(split: Split, part: slice | None) -> Split:
  """The examples of `split` that `part` (from `parse`) selects, in order."""
  if part is None:
    return split
  chosen = slice(_index(part.start, len(split)), _index(part.stop, len(split)))
  return Split(split.images[chosen], split.labels[chosen], split.skipped)


def holdout(count: int, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
  """Returns (kept, held out): sorted indices of `count` examples, the held-out `fraction` of
  them (rounded) drawn by `seed`. Disjoint, together all of them, and the same for the same
  seed, whatever else changes (the training seed included)."""
  order = np.random.default_rng(seed).permutation(count)
  num_held_out = int(round(count * fraction))
  return np.sort(order[:count - num_held_out]), np.sort(order[count - num_held_out:])
