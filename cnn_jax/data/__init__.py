"""From a data spec to train/eval data and their metadata: splits in host memory
(`load_dataset`), or random-access sources read batch by batch through grain (`stream_dataset`).

Sources, chosen by `DataSpec.name`:
  'digits'        the UCI handwritten digits bundled with scikit-learn (offline)
  'image_folder'  the user's images under `path` (class subfolders or CLASS.N.jpg names)
  'csv'           the images under `path`, labelled by the CSV file `csv`
  'idx'           MNIST-format IDX files under `path`
  anything else   a TFDS image-classification dataset of that name
"""

import dataclasses
import os

import numpy as np

from cnn_jax.data import (cache, csv_labels, digits, idx, image_folder, npy_cache, stream,
                          tfds_source)
from cnn_jax.data.batching import eval_batches, steps_per_epoch, train_batch, train_indices
from cnn_jax.data.dataset import Dataset, DatasetInfo, Normalizer, Split
from cnn_jax.data.images import RESIZE_MODES, resize_images
from cnn_jax.data.stream import StreamedDataset
from cnn_jax.errors import UserError

__all__ = ['DataSpec', 'Dataset', 'StreamedDataset', 'DatasetInfo', 'Normalizer', 'Split',
           'describe_dataset', 'load_dataset', 'load_split', 'stream_dataset', 'raw_max_value',
           'eval_batches', 'train_batch', 'train_indices', 'steps_per_epoch', 'LOCAL_SOURCES',
           'NO_HORIZONTAL_FLIP', 'RESIZE_MODES']

LOCAL_SOURCES = ('digits', 'image_folder', 'csv', 'idx')
_MAX_VALUE = {'digits': digits.MAX_VALUE}  # Largest raw pixel value; 255 for every other source.
# Datasets whose classes a mirror image would change (a mirrored 2 or 7 is not a digit).
NO_HORIZONTAL_FLIP = ('digits', 'mnist', 'emnist', 'kmnist', 'svhn_cropped', 'idx')


@dataclasses.dataclass(frozen=True)
class DataSpec:
  """Where the data comes from and how it is decoded (see configs/default.py for each field)."""
  name: str = 'digits'
  path: str | None = None
  tfds_data_dir: str | None = None
  download: bool = False
  image_size: int = 0
  channels: int = 0  # 0: the source's own (RGB for image folders).
  resize: str = 'squash'
  validation_fraction: float = 0.2
  split_seed: int = 0
  max_skip_fraction: float = 0.05
  workers: int = 0  # Decoding threads; 0 = one per CPU core.
  cache: bool = True
  csv: str | None = None
  csv_file_column: str = ''  # '': the first of csv_labels.FILE_COLUMNS in the header.
  csv_label_column: str = ''  # '': the first of csv_labels.LABEL_COLUMNS in the header.
  class_names: tuple[str, ...] = ()  # Fixes the classes of a CSV; () = its labels, sorted.


def _needs_path(spec: DataSpec) -> str:
  if not spec.path:
    raise UserError(f"config.data.name={spec.name!r} reads local files: set --config.data.path "
                    '(a directory).')
  if not os.path.isdir(spec.path):
    raise UserError(f'config.data.path={spec.path!r} is not a directory.')
  return spec.path


def _folder_index(spec: DataSpec) -> tuple[image_folder.FolderIndex, list[tuple[str, str]]]:
  """Returns the file index of an 'image_folder' or 'csv' source, with the CSV's row problems."""
  if spec.name == 'csv':
    if not spec.csv:
      raise UserError("config.data.name='csv' needs --config.data.csv=FILE.csv (file and label "
                      'columns) and --config.data.path=DIR (the images).')
    return csv_labels.index_csv(spec.csv, _needs_path(spec), spec.csv_file_column,
                                spec.csv_label_column, tuple(spec.class_names))
  return image_folder.index_folder(_needs_path(spec)), []


def describe_dataset(spec: DataSpec) -> DatasetInfo:
  """Returns the dataset's metadata (classes, image shape after resizing) without decoding it.

  Raises:
    UserError: unknown dataset, missing path, or images of varying size and no `image_size`.
  """
  if spec.name in ('image_folder', 'csv'):
    index, _ = _folder_index(spec)
    if not spec.image_size:
      raise UserError('images in a folder vary in size: set --config.data.image_size=N to resize '
                      'them all to N×N (e.g. 128).')
    shape = (spec.image_size, spec.image_size, spec.channels or 3)
    return DatasetInfo(os.path.basename(os.path.normpath(spec.path)), len(index.class_names),
                       index.class_names, shape)
  if spec.name in ('digits', 'idx'):
    if spec.name == 'digits':
      num_classes, shape, names = 10, digits.INFO.image_shape, digits.INFO.class_names
    else:
      num_classes, shape = idx.describe(_needs_path(spec))
      names = tuple(str(i) for i in range(num_classes))
    if spec.channels not in (0, 1):
      raise UserError(f'{spec.name!r} images are grey: config.data.channels must be 0 or 1.')
    if spec.image_size:
      shape = (spec.image_size, spec.image_size, 1)
    return DatasetInfo(spec.name, num_classes, names, tuple(shape))
  class_names, (height, width, channels) = tfds_source.describe(spec.name, spec.tfds_data_dir)
  if spec.image_size:
    height = width = spec.image_size
  elif height is None or width is None:
    raise UserError(f'{spec.name!r} images vary in size; set --config.data.image_size=N to resize '
                    'them to N×N (e.g. 160 for cats_vs_dogs).')
  return DatasetInfo(spec.name, len(class_names), class_names, (height, width, channels))


def _load_folder_split(spec: DataSpec, split: str, folder) -> Split:
  index, row_problems = folder
  total_rows = len(index.files) + len(row_problems)
  if len(row_problems) > spec.max_skip_fraction * total_rows:
    raise UserError(
        f'{len(row_problems):,} of {total_rows:,} rows of {spec.csv} are unusable, more than '
        f'config.data.max_skip_fraction={spec.max_skip_fraction}: '
        + '; '.join(f'{where}: {why}' for where, why in row_problems[:5]))
  files, labels = image_folder.split_files(index, split, spec.validation_fraction, spec.split_seed)
  channels = spec.channels or 3
  decode = lambda: image_folder.decode_split(files, labels, spec.image_size, channels,
                                             spec.resize, spec.workers or os.cpu_count(),
                                             spec.max_skip_fraction)
  if spec.cache:
    key = cache.cache_key(files, labels=labels, size=spec.image_size, channels=channels,
                          resize=spec.resize)
    loaded, _ = cache.cached_split(os.path.join(spec.path, '.cnn_jax_cache'), split, key, decode)
  else:
    loaded = decode()
  if split == 'train' and row_problems:  # Reported once, with the training split's skips.
    loaded = dataclasses.replace(loaded, skipped=tuple(row_problems) + loaded.skipped)
  return loaded


def _folder(spec: DataSpec):
  """The file index of a folder or CSV source (built once per load), else None."""
  return _folder_index(spec) if spec.name in ('image_folder', 'csv') else None


def _prepare(spec: DataSpec) -> stream.PrepareExample:
  return stream.PrepareExample(spec.image_size, spec.resize)


def _tfds_split(spec: DataSpec, split: str):
  """Opens a TFDS split as a random-access source: its decoded cache with `spec.cache` (written
  on first use, beside the TFDS data), else the dataset's own files."""
  source = tfds_source.open_split(spec.name, split, spec.tfds_data_dir, spec.download)
  if not spec.cache:
    return source
  directory, stem = tfds_source.cache_name(spec.name, split, spec.tfds_data_dir, _prepare(spec),
                                           len(source))
  prepare = _prepare(spec)
  try:
    return npy_cache.write_or_open(directory, stem, len(source), prepare(source[0])['image'].shape,
                                   lambda: stream.read_all(source, prepare, spec.workers))
  except OSError as e:  # A read-only data dir or a full disk: read the dataset's own files.
    print(f'Not caching decoded {spec.name!r} images in {directory}: {e}', flush=True)
    return source


def _load_split(spec: DataSpec, split: str, folder) -> Split:
  if folder is not None:
    return _load_folder_split(spec, split, folder)
  if spec.name == 'digits':
    if split not in digits.SPLITS:
      raise UserError(f"'digits' has splits {digits.SPLITS}; got {split!r}.")
    loaded = digits.load_split(split)
  elif spec.name == 'idx':
    loaded = idx.load_split(spec.path, split)
  else:
    source = _tfds_split(spec, split)
    if isinstance(source, npy_cache.NpySource):  # The decoded cache: one read, no decoding.
      return Split(np.load(source.images_path), source.labels)
    return tfds_source.load_split(source, _prepare(spec), spec.workers)
  return Split(resize_images(loaded.images, spec.image_size), loaded.labels) if (
      spec.image_size) else loaded


def load_split(spec: DataSpec, split: str) -> Split:
  """Loads one split into host memory as raw pixels (uint8 [N, H, W, C]) and int32 labels.

  Raises:
    UserError: an unknown split or source, or (image folders) too many unreadable files.
  """
  describe_dataset(spec)  # Name, path and size problems, before any decoding.
  return _load_split(spec, split, _folder(spec))


def stream_dataset(spec: DataSpec, train_split: str = 'train',
                   eval_split: str = 'test') -> stream.StreamedDataset:
  """Opens both splits as random-access sources for `stream.train_batches` / `eval_batches`.

  TFDS datasets are read from their files (or from their decoded cache) as batches are drawn, so
  no split is held in memory; the local sources, small or cached already, are loaded first.
  """
  info = describe_dataset(spec)
  if spec.name in LOCAL_SOURCES:
    loaded = load_dataset(spec, train_split, eval_split)
    return stream.StreamedDataset(info, stream.ArraySource(loaded.train),
                                  stream.ArraySource(loaded.eval), loaded.normalizer,
                                  stream.PrepareExample())  # Already decoded and resized.
  train, held_out = (_tfds_split(spec, split) for split in (train_split, eval_split))
  normalizer = stream.fit_normalizer(train, _prepare(spec), raw_max_value(spec.name), spec.workers)
  return stream.StreamedDataset(info, train, held_out, normalizer, _prepare(spec))


def raw_max_value(name: str) -> float:
  """Returns the largest raw pixel value of source `name` (16 for digits, 255 otherwise)."""
  return _MAX_VALUE.get(name, 255.0)


def load_dataset(spec: DataSpec, train_split: str = 'train', eval_split: str = 'test') -> Dataset:
  """Loads both splits into host memory and fits the input normalisation on the training split.

  Returns:
    A `Dataset` whose splits hold raw pixels; `dataset.normalizer` maps them to model inputs.
  """
  info = describe_dataset(spec)
  folder = _folder(spec)  # Indexed (a CSV parsed) once for both splits.
  train, held_out = (_load_split(spec, split, folder) for split in (train_split, eval_split))
  return Dataset(info, train, held_out, Normalizer.fit(train.images, raw_max_value(spec.name)))
