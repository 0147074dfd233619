"""From a data spec to train/eval data and their metadata: splits in host memory
(`load_dataset`), or random-access sources read batch by batch through grain (`stream_dataset`).

Sources, chosen by `DataSpec.name` in one registry (`sources.SOURCES`):
  'digits'        the UCI handwritten digits bundled with scikit-learn (offline)
  'image_folder'  the user's images under `path` (class subfolders or CLASS.N.jpg names)
  'csv'           the images under `path`, labelled by the CSV file `csv`
  'idx'           MNIST-format IDX files under `path`
  anything else   a TFDS image-classification dataset of that name

`open_source(spec)` opens one once; a caller that describes the dataset and then loads it passes
the same Source on, so an image folder is indexed (a CSV parsed) once per run. Decoded images of
folders, CSV datasets and TFDS datasets are cached in one format (`npy_cache`).
"""

import numpy as np

from cnn_jax.data import slicing, stream
from cnn_jax.data.batching import eval_batches, steps_per_epoch, train_batch, train_indices
from cnn_jax.data.dataset import Dataset, DatasetInfo, Normalizer, Split
from cnn_jax.data.images import RESIZE_MODES
from cnn_jax.data.sources import SOURCES, DataSpec, Source, open_source
from cnn_jax.data.stream import StreamedDataset
from cnn_jax.errors import UserError

__all__ = ['DataSpec', 'Dataset', 'StreamedDataset', 'DatasetInfo', 'Normalizer', 'Split',
           'Source', 'open_source', 'describe_dataset', 'load_dataset', 'load_split',
           'stream_dataset', 'eval_batches', 'train_batch', 'train_indices', 'steps_per_epoch',
           'LOCAL_SOURCES', 'NO_HORIZONTAL_FLIP', 'RESIZE_MODES', 'SOURCES', 'FLIP_KEYS',
           'flip_problems']

VALIDATION = 'validation'  # The split every choice is made on (see `load_dataset`).
# The sources whose splits are read whole into memory, decoded (the rest are TFDS datasets).
LOCAL_SOURCES = tuple(name for name, source in SOURCES.items() if source.local)
# Datasets whose classes a mirror image would change (a mirrored 2 or 7 is not a digit). IDX files
# are named after what they hold (`idx.KNOWN`): Fashion-MNIST may be mirrored, MNIST may not.
NO_HORIZONTAL_FLIP = ('digits', 'mnist', 'emnist', 'kmnist', 'svhn_cropped')


FLIP_KEYS = ('horizontal_flip', 'test_flip')  # The config.augment settings that mirror images.


def flip_problems(dataset_name: str, augment) -> list[str]:
  """Why each config.augment setting of `augment` that mirrors images (FLIP_KEYS) and is on
  must stay off for dataset `dataset_name`: a mirrored 2 is no longer a 2."""
  if dataset_name not in NO_HORIZONTAL_FLIP:
    return []
  return [f'config.augment.{key}=True mirrors images, which changes what a {dataset_name!r} '
          f'image means (a mirrored 2 is not a 2); leave it off for this dataset'
          for key in FLIP_KEYS if augment[key]]


def _opened(spec_or_source: DataSpec | Source) -> Source:
  if isinstance(spec_or_source, Source):
    return spec_or_source
  return open_source(spec_or_source)


def describe_dataset(spec: DataSpec) -> DatasetInfo:
  """Returns the dataset's metadata (classes, image shape after resizing) without decoding it.

  Raises:
    UserError: unknown dataset, missing path, or images of varying size and no `image_size`.
  """
  return open_source(spec).describe()


def load_split(spec: DataSpec, split: str, train_split: str = 'train') -> Split:
  """Loads one split into host memory as raw pixels (uint8 [N, H, W, C]) and int32 labels.

  'validation' of a dataset without one is the part of `train_split` that training held out
  (see `load_dataset`).

  Raises:
    UserError: an unknown split or source, or (image folders) too many unreadable files.
  """
  source = open_source(spec)
  source.describe()  # Name, path and size problems, before any decoding.
  if _holds_out(source, split):
    return _parts(source, train_split, VALIDATION, None, _InMemory())[1]
  return source.load_split(split)


def _holds_out(source: Source, eval_split: str) -> bool:
  """Whether `eval_split` is held out of the training split: 'validation' of a source without."""
  return eval_split == VALIDATION and VALIDATION not in source.splits


def _parts(source: Source, train_split: str, eval_split: str, test_split: str | None,
           open_split) -> tuple:
  """(train, held out, test or None) of `source`, each opened with `open_split(source, split)`.

  'validation' of a source that has none is held out of the training split:
  `spec.validation_fraction` of it, drawn by `spec.split_seed` (fixed whatever the training seed),
  and training uses the rest.
  """
  train = _nonempty(open_split(source, train_split), 'train_split', train_split)
  if _holds_out(source, eval_split):
    kept, held_out = slicing.holdout(len(train), source.spec.validation_fraction,
                                     source.spec.split_seed)
    if not len(held_out):
      raise UserError(f'config.data.validation_fraction={source.spec.validation_fraction} holds '
                      f'out no example of {len(train):,}: raise it to evaluate on a validation '
                      'split.')
    train, held = open_split.part(train, kept), open_split.part(train, held_out)
  else:
    held = _nonempty(open_split(source, eval_split), 'eval_split', eval_split)
  test = _nonempty(open_split(source, test_split), 'test_split', test_split) if test_split else None
  return train, held, test


def _nonempty(split, key: str, name: str):
  """`split`, if it holds an example; an empty slice ('train[:0]', 'test[50%:10%]') would train
  nothing or report an accuracy of nothing."""
  if not len(split):
    raise UserError(f'config.data.{key}={name!r} selects no example: check its slice '
                    "(START:STOP, e.g. 'train[:90%]').")
  return split


class _InMemory:
  """Splits read whole into host memory."""

  def __call__(self, source: Source, split: str) -> Split:
    return source.load_split(split)

  @staticmethod
  def part(split: Split, indices: np.ndarray) -> Split:
    return Split(split.images[indices], split.labels[indices], split.skipped)


class _Streamed:
  """Splits as random-access sources, read as batches are drawn."""

  def __call__(self, source: Source, split: str):
    return source.open_split(split)

  part = staticmethod(stream.subset)


def load_dataset(spec_or_source: DataSpec | Source, train_split: str = 'train',
                 eval_split: str = 'test', test_split: str | None = None) -> Dataset:
  """Loads the splits into host memory and fits the input normalisation on the training split.

  Args:
    spec_or_source: what to load, or the Source a caller opened (and described) already.
    train_split, eval_split: the splits' names; eval_split 'validation' is held out of the
      training split where the dataset has no such split.
    test_split: a split reported once at the end, or None.

  Returns:
    A `Dataset` whose splits hold raw pixels; `dataset.normalizer` maps them to model inputs.
  """
  source = _opened(spec_or_source)
  info = source.describe()
  train, held_out, test = _parts(source, train_split, eval_split, test_split, _InMemory())
  return Dataset(info, train, held_out, Normalizer.fit(train.images, source.max_value), test)


def stream_dataset(spec_or_source: DataSpec | Source, train_split: str = 'train',
                   eval_split: str = 'test', test_split: str | None = None) -> StreamedDataset:
  """Opens the splits as random-access sources for `stream.train_batches` /
  `stream.eval_shard_batches`.

  TFDS datasets are read from their files (or from their decoded cache) as batches are drawn, so
  no split is held in memory; the local sources, small or cached already, are loaded first. The
  normalisation is fitted on the same examples `load_dataset` fits it on, to the same values.
  The splits are those of `load_dataset`, with the same arguments.
  """
  source = _opened(spec_or_source)
  info = source.describe()
  train, held_out, test = _parts(source, train_split, eval_split, test_split, _Streamed())
  normalizer = stream.fit_normalizer(train, source.prepare, source.max_value,
                                     source.spec.workers)
  return StreamedDataset(info, train, held_out, normalizer, source.prepare, test)
