"""The offline default: the UCI handwritten digits that scikit-learn ships inside its wheel.

1,797 real 8×8 grey-scale digits (values 0–16) written by 43 people. It needs no network and is
big enough that a small ConvNet's test accuracy means something.

The digits are read from scikit-learn's data file without importing scikit-learn (whose import
takes about 1.5 s on a 2-core CPU, a fifth of the default job), and the fixed train/test split is
the one scikit-learn's stratified `train_test_split` draws, written out here so that it stays the
same whatever scikit-learn's version.
"""

import functools
import importlib.util
import os

import numpy as np

from cnn_jax.data.dataset import DatasetInfo, Split

MAX_VALUE = 16.0  # Pixel values are counts of set bits in 4×4 blocks of a 32×32 bitmap: 0..16.
TEST_COUNT = 360  # 20% of 1,797, rounded up: each test error moves accuracy by 0.28 points.
SPLIT_SEED = 0  # Fixed, not the training seed, so every run is scored on the same test digits.
SPLITS = ('train', 'test')

INFO = DatasetInfo(
    name='digits',
    num_classes=10,
    class_names=tuple(str(d) for d in range(10)),
    image_shape=(8, 8, 1),
)


def load_split(split: str) -> Split:
  """Returns the 'train' or 'test' split as uint8 images [N, 8, 8, 1] and int32 labels [N].

  The split is stratified (each digit in the same proportion in both) and fixed.
  """
  if split not in SPLITS:
    raise ValueError(f'digits has splits {SPLITS}, not {split!r}')
  images, labels = _all_digits()
  train_idx, test_idx = stratified_split(labels, TEST_COUNT, SPLIT_SEED)
  idx = train_idx if split == 'train' else test_idx
  return Split(images[idx], labels[idx])


@functools.cache
def _all_digits() -> tuple[np.ndarray, np.ndarray]:
  """All 1,797 digits in scikit-learn's order: uint8 images [N, 8, 8, 1], int32 labels [N]."""
  spec = importlib.util.find_spec('sklearn')  # Locates the package without running it.
  locations = (spec and spec.submodule_search_locations) or []
  files = [os.path.join(d, 'datasets', 'data', 'digits.csv.gz') for d in locations]
  files = [f for f in files if os.path.exists(f)]
  if files:  # 64 pixel values then the label on each line, as load_digits reads them.
    table = np.loadtxt(files[0], delimiter=',')
    pixels, labels = table[:, :-1], table[:, -1]
  else:  # A scikit-learn that keeps the file elsewhere: its own loader finds it.
    from sklearn import datasets  # pylint: disable=g-import-not-at-top
    digits = datasets.load_digits()
    pixels, labels = digits.data, digits.target
  images = pixels.astype(np.uint8).reshape(-1, 8, 8, 1)
  images.flags.writeable = False  # Cached: shared by every caller.
  labels = labels.astype(np.int32)
  labels.flags.writeable = False
  return images, labels


def stratified_split(labels: np.ndarray, test_count: int,
                     seed: int) -> tuple[np.ndarray, np.ndarray]:
  """Returns (train, test) indices as scikit-learn's `train_test_split(..., test_size=test_count,
  random_state=seed, stratify=labels)` draws them: per class, a share of the test set as close
  to the class's share of the data as whole examples allow (ties broken at random), its examples
  drawn at random, then both index lists shuffled."""
  rng = np.random.RandomState(seed)
  _, inverse, counts = np.unique(labels, return_inverse=True, return_counts=True)
  train_counts = _approximate_mode(counts, len(labels) - test_count, rng)
  test_counts = _approximate_mode(counts - train_counts, test_count, rng)
  by_class = np.split(np.argsort(inverse, kind='stable'), np.cumsum(counts)[:-1])
  train, test = [], []
  for members, in_train, in_test in zip(by_class, train_counts, test_counts):
    shuffled = members[rng.permutation(len(members))]
    train.extend(shuffled[:in_train])
    test.extend(shuffled[in_train:in_train + in_test])
  return rng.permutation(train), rng.permutation(test)


def _approximate_mode(counts: np.ndarray, draws: int, rng: np.random.RandomState) -> np.ndarray:
  """How many of `draws` to take from each class of `counts`: the floor of its proportional
  share, plus one for the largest remainders (ties drawn with `rng`) until the total is right."""
  share = counts / counts.sum() * draws
  taken = np.floor(share)
  missing = int(draws - taken.sum())
  remainder = share - taken
  for value in np.sort(np.unique(remainder))[::-1]:
    if missing <= 0:
      break
    (tied,) = np.where(remainder == value)
    now = min(len(tied), missing)
    taken[rng.choice(tied, size=now, replace=False)] += 1
    missing -= now
  return taken.astype(int)
