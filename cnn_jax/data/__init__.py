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
           'eval_batches', 'train_batch', 'steps_per_epoch']


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


def load_dataset(name: str, train_split: str = 'train', eval_split: str = 'test',
                 tfds_data_dir: str | None = None, download: bool = False,
                 image_size: int = 0) -> Dataset:
  """Loads both splits into host memory and fits the input normalisation on the training split.

  Args:
    name: 'digits' or a TFDS image-classification dataset name.
    train_split: split to train on.
    eval_split: held-out split for evaluation.
    tfds_data_dir: TFDS data directory; None for TFDS's default.
    download: let TFDS download and prepare a missing dataset.
    image_size: resize images to image_size × image_size; 0 keeps their size.

  Returns:
    A `Dataset` whose splits hold raw pixels; `dataset.normalizer` maps them to model inputs.
  """
  info = describe_dataset(name, tfds_data_dir, image_size)
  if name in _SOURCES:
    source = _SOURCES[name]
    for split in (train_split, eval_split):
      if split not in source.splits:
        raise UserError(f'{name!r} has splits {source.splits}; got {split!r}.')
    train, held_out = source.load_split(train_split), source.load_split(eval_split)
    if image_size:
      train, held_out = (Split(resize_images(s.images, image_size), s.labels)
                         for s in (train, held_out))
    max_value = source.max_value
  else:
    train, held_out = (tfds_source.load_split(name, split, tfds_data_dir, download, image_size)
                       for split in (train_split, eval_split))
    max_value = _TFDS_MAX_VALUE
  return Dataset(info, train, held_out, Normalizer.fit(train.images, max_value))

