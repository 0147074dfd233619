"""One entry point from a dataset name to in-memory train/eval splits and their metadata.

Sources: 'digits' (offline, bundled with scikit-learn) and any TFDS image-classification dataset
by name. Per-dataset facts live in `_SOURCES` below, not in branches through the code.
"""

import dataclasses
from typing import Callable

from cnn_jax.data import digits, tfds_source
from cnn_jax.data.batching import eval_batches, train_batch, steps_per_epoch
from cnn_jax.data.dataset import Dataset, DatasetInfo, Normalizer, Split
from cnn_jax.data.images import resize_images
from cnn_jax.errors import UserError

__all__ = ['Dataset', 'DatasetInfo', 'Normalizer', 'Split', 'describe_dataset', 'load_dataset',
           'load_split', 'raw_max_value', 'eval_batches', 'train_batch', 'steps_per_epoch']


@dataclasses.dataclass(frozen=True)
class _LocalSource:
  info: DatasetInfo
  max_value: float  # Largest raw pixel value, for scaling to [0, 1].
  splits: tuple[str, ...]
  load_split: Callable[[str], Split]


_SOURCES = {
    'digits': _LocalSource(digits.INFO, digits.MAX_VALUE, digits.SPLITS, digits.load_split),
}
_TFDS_MAX_VALUE = 255.0  # TFDS image features are uint8.


def describe_dataset(name: str, tfds_data_dir: str | None = None,
                     image_size: int = 0) -> DatasetInfo:
  """Returns the dataset's metadata (classes, image shape after resizing) without loading it.

  Raises:
    UserError: unknown dataset, or images of varying size with no `image_size` to resize them to.
  """
  if name in _SOURCES:
    info = _SOURCES[name].info
    if image_size:
      info = dataclasses.replace(info, image_shape=(image_size, image_size, info.image_shape[2]))
    return info
  class_names, (height, width, channels) = tfds_source.describe(name, tfds_data_dir)
  if image_size:
    height = width = image_size
  elif height is None or width is None:
    raise UserError(f'{name!r} images vary in size; set --config.data.image_size=N to resize them '
                    'to N×N (e.g. 160 for cats_vs_dogs).')
  return DatasetInfo(name, len(class_names), class_names, (height, width, channels))


def load_split(name: str, split: str, tfds_data_dir: str | None = None, download: bool = False,
               image_size: int = 0) -> Split:
  """Loads one split into host memory as raw pixels (uint8 [N, H, W, C]) and int32 labels.

  Args:
    name: 'digits' or a TFDS image-classification dataset name.
    split: the split, e.g. 'test' or (TFDS) 'train[80%:]'.
    tfds_data_dir: TFDS data directory; None for TFDS's default.
    download: let TFDS download and prepare a missing dataset.
    image_size: resize images to image_size × image_size; 0 keeps their size.
  """
  describe_dataset(name, tfds_data_dir, image_size)  # Name and size problems, before any reading.
  if name not in _SOURCES:
    return tfds_source.load_split(name, split, tfds_data_dir, download, image_size)
  source = _SOURCES[name]
  if split not in source.splits:
    raise UserError(f'{name!r} has splits {source.splits}; got {split!r}.')
  loaded = source.load_split(split)
  return Split(resize_images(loaded.images, image_size), loaded.labels) if image_size else loaded


def raw_max_value(name: str) -> float:
  """Returns the largest raw pixel value of dataset `name` (16 for digits, 255 for TFDS images)."""
  return _SOURCES[name].max_value if name in _SOURCES else _TFDS_MAX_VALUE


def load_dataset(name: str, train_split: str = 'train', eval_split: str = 'test',
                 tfds_data_dir: str | None = None, download: bool = False,
                 image_size: int = 0) -> Dataset:
  """Loads both splits into host memory and fits the input normalisation on the training split.

  Args: as for `load_split`, with the two splits to train and evaluate on.

  Returns:
    A `Dataset` whose splits hold raw pixels; `dataset.normalizer` maps them to model inputs.
  """
  info = describe_dataset(name, tfds_data_dir, image_size)
  train, held_out = (load_split(name, split, tfds_data_dir, download, image_size)
                     for split in (train_split, eval_split))
  return Dataset(info, train, held_out, Normalizer.fit(train.images, raw_max_value(name)))
