"""The offline default: the UCI handwritten digits that scikit-learn ships inside its wheel.

1,797 real 8×8 grey-scale digits (values 0–16) written by 43 people. It needs no network, loads in
about two seconds and is big enough that a small ConvNet's test accuracy means something.
"""

import numpy as np

from cnn_jax.data.dataset import DatasetInfo, Split

MAX_VALUE = 16.0  # Pixel values are counts of set bits in 4×4 blocks of a 32×32 bitmap: 0..16.
TEST_FRACTION = 0.2  # 360 test digits: each test error moves accuracy by 0.28 points.
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
  # Imported here: scikit-learn costs ~1 s to import and only this source needs it.
  from sklearn import datasets, model_selection  # pylint: disable=g-import-not-at-top
  digits = datasets.load_digits()
  images = digits.images.astype(np.uint8)[..., None]  # [1797, 8, 8, 1]
  labels = digits.target.astype(np.int32)
  train_idx, test_idx = model_selection.train_test_split(
      np.arange(len(labels)), test_size=TEST_FRACTION, random_state=SPLIT_SEED, stratify=labels)
  idx = train_idx if split == 'train' else test_idx
  return Split(images[idx], labels[idx])
