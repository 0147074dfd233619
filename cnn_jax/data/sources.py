"""Where examples come from: one small protocol, one class per kind of source, one registry.

A `Source` is opened once from a `DataSpec` (`open_source`) and answers three questions: what the
dataset is (`describe`: cheap, no decoding, and where the user's mistakes are raised), one split in
host memory (`load_split`), and one split as a random-access source for streaming (`open_split`).
The classes are found by name in `SOURCES`; any other name is a TFDS dataset. A folder or CSV is
indexed once per Source: describing it and loading both splits share that index.
"""

import abc
import dataclasses
import functools
import os
from typing import ClassVar

import numpy as np

from cnn_jax.data import (csv_labels, digits, idx, image_folder, npy_cache, slicing, stream,
                          tfds_source)
from cnn_jax.data.dataset import DatasetInfo, Split
from cnn_jax.data.images import resize_images
from cnn_jax.errors import UserError

FOLDER_CACHE = '.cnn_jax_cache'  # Under the dataset's own directory (skipped by the indexers).


@dataclasses.dataclass(frozen=True)
class DataSpec:
  """Where the data comes from and how it is decoded (cnn_jax/configs/default.py explains each
  field)."""
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
  # A CSV's classes and their order (() = its labels, sorted); an IDX set's class names.
  class_names: tuple[str, ...] = ()


class Source(abc.ABC):
  """One dataset, opened from a DataSpec: its metadata and its splits.

  Attributes:
    spec: what was opened.
    max_value: the largest raw pixel value, which the normaliser scales by.
    local: whether the splits are read whole into host memory, decoded, even when streamed.
    splits: the names of the dataset's own splits ('validation', where absent, is held out of
      the training split: see `cnn_jax.data.load_dataset`).
  """
  max_value: ClassVar[float] = 255.0
  local: ClassVar[bool] = True
  splits: tuple[str, ...] = ('train', 'test')

  def __init__(self, spec: DataSpec):
    self.spec = spec

  @abc.abstractmethod
  def describe(self) -> DatasetInfo:
    """Returns the classes and the image shape after resizing, without decoding any image.

    Raises:
      UserError: a missing path or dataset, or images of varying size and no image_size.
    """

  @abc.abstractmethod
  def load_split(self, split: str) -> Split:
    """Returns `split` in host memory: raw uint8 [N, H, W, C] pixels (resized to
    spec.image_size when set) and int32 [N] labels.

    Raises:
      UserError: an unknown split, or (image folders) too many unreadable files.
    """

  def open_split(self, split: str):
    """Returns `split` as a random-access source for `stream`: len(), [i] -> {'image', 'label'},
    and `gather(indices)` for a whole batch."""
    return stream.ArraySource(self.load_split(split))

  @property
  def prepare(self) -> stream.PrepareExample:
    """The per-example step a stream applies to `open_split`'s examples: none, they are decoded
    and resized already."""
    return stream.PrepareExample()


def _directory(spec: DataSpec) -> str:
  if not spec.path:
    raise UserError(f"config.data.name={spec.name!r} reads local files: set --config.data.path "
                    '(a directory).')
  if not os.path.isdir(spec.path):
    raise UserError(f'config.data.path={spec.path!r} is not a directory.')
  return spec.path


def _grey(spec: DataSpec, info: DatasetInfo) -> DatasetInfo:
  """`info` of grey images, after resizing to spec.image_size."""
  if spec.channels not in (0, 1):
    raise UserError(f'{spec.name!r} images are grey: config.data.channels must be 0 or 1.')
  if not spec.image_size:
    return info
  return dataclasses.replace(info, image_shape=(spec.image_size, spec.image_size, 1))


def _resized(split: Split, size: int) -> Split:
  return Split(resize_images(split.images, size), split.labels) if size else split


class Digits(Source):
  """The UCI handwritten digits bundled with scikit-learn: offline, 8×8 grey, values 0–16."""
  max_value = digits.MAX_VALUE

  def describe(self) -> DatasetInfo:
    return _grey(self.spec, digits.INFO)

  def load_split(self, split: str) -> Split:
    name, part = slicing.parse(split)
    if name not in digits.SPLITS:
      raise UserError(f"'digits' has splits {digits.SPLITS}, and 'validation' held out of the "
                      f'training split; got {split!r}.')
    return _resized(slicing.take(digits.load_split(name), part), self.spec.image_size)


class Idx(Source):
  """MNIST-format IDX files under spec.path."""

  def describe(self) -> DatasetInfo:
    """Named after the dataset when the files are a known one (MNIST, Fashion-MNIST), with its
    class names; spec.class_names, if given, names the classes of any set."""
    known, class_names, shape = idx.describe(_directory(self.spec))
    if self.spec.class_names:
      if len(self.spec.class_names) != len(class_names):
        raise UserError(f'config.data.class_names has {len(self.spec.class_names)} name(s), but '
                        f'the IDX files in {self.spec.path} hold {len(class_names)} classes.')
      class_names = tuple(self.spec.class_names)
    return _grey(self.spec, DatasetInfo(known or self.spec.name, len(class_names), class_names,
                                        shape))

  def load_split(self, split: str) -> Split:
    name, part = slicing.parse(split)
    split_data = slicing.take(idx.load_split(_directory(self.spec), name), part)
    return _resized(split_data, self.spec.image_size)


def _not_caching(directory: str, error: OSError) -> None:
  # A read-only dataset directory or a full disk: train on what was decoded, without the cache.
  print(f'Not caching decoded images in {directory}: {error}', flush=True)


class ImageFolder(Source):
  """The user's images under spec.path: one subfolder per class, or CLASS.N.jpg names."""
  splits = image_folder.SPLITS

  def _read_index(self) -> tuple[image_folder.FolderIndex, list[tuple[str, str]]]:
    return image_folder.index_folder(_directory(self.spec)), []

  def __init__(self, spec: DataSpec):
    super().__init__(spec)
    self._skipped: dict[str, tuple] = {}  # Unreadable files of each split loaded, for the limit.

  @functools.cached_property
  def index(self) -> tuple[image_folder.FolderIndex, list[tuple[str, str]]]:
    """(every file with its label, the CSV rows left out as (where, why)), read once."""
    return self._read_index()

  def describe(self) -> DatasetInfo:
    index, _ = self.index
    if not self.spec.image_size:
      raise UserError('images in a folder vary in size: set --config.data.image_size=N to resize '
                      'them all to N×N (e.g. 128).')
    shape = (self.spec.image_size, self.spec.image_size, self.spec.channels or 3)
    return DatasetInfo(os.path.basename(os.path.normpath(self.spec.path)),
                       len(index.class_names), index.class_names, shape)

  def load_split(self, split: str) -> Split:
    """The split's files decoded (or read from the decoded cache, with spec.cache); `skipped`
    lists the unreadable files and, for the training split, the CSV rows left out."""
    self.describe()  # Size problems before any decoding.
    index, row_problems = self.index
    total_rows = len(index.files) + len(row_problems)
    if len(row_problems) > self.spec.max_skip_fraction * total_rows:
      raise UserError(
          f'{len(row_problems):,} of {total_rows:,} rows of {self.spec.csv} are unusable, more '
          f'than config.data.max_skip_fraction={self.spec.max_skip_fraction}: '
          + '; '.join(f'{where}: {why}' for where, why in row_problems[:5]))
    files, labels = image_folder.split_files(index, split, self.spec.validation_fraction,
                                             self.spec.split_seed)
    if split == 'validation' and (unseen := image_folder.classes_missing(index, labels)):
      print(f'Note: the validation split ({len(files):,} images) has no image of '
            f'{", ".join(map(repr, unseen))}: too few to hold out '
            f'{self.spec.validation_fraction:.0%} of, so validation does not measure '
            f'{"it" if len(unseen) == 1 else "them"}. Add images, or raise '
            'config.data.validation_fraction.', flush=True)
    loaded = self._decode(split, files, labels)
    self._skipped[split] = loaded.skipped
    image_folder.check_skipped(self._skipped, len(index.files), self.spec.max_skip_fraction)
    if split == 'train' and row_problems:  # Reported once, with the training split's skips.
      loaded = dataclasses.replace(loaded, skipped=tuple(row_problems) + loaded.skipped)
    return loaded

  def _decode(self, split: str, files: list[str], labels: list[int]) -> Split:
    """Decodes the files, or reads them from the decoded cache in spec.path (with spec.cache)."""
    spec, channels = self.spec, self.spec.channels or 3
    decode = lambda: image_folder.decode_split(files, labels, spec.image_size, channels,
                                               spec.resize, spec.workers or os.cpu_count())
    if not spec.cache:
      return decode()
    directory = os.path.join(spec.path, FOLDER_CACHE)
    name = f'{split}-' + npy_cache.cache_key(files, labels=labels, size=spec.image_size,
                                             channels=channels, resize=spec.resize)
    cached = npy_cache.open_cached(directory, name, len(files))
    if cached is not None:
      return Split(np.load(cached.images_path), cached.labels, cached.skipped)
    loaded = decode()  # In memory first: how many files are readable is known only afterwards.
    try:
      npy_cache.write(directory, name, len(files), loaded.images.shape[1:],
                      lambda: [{'image': loaded.images, 'label': loaded.labels}], loaded.skipped)
    except OSError as e:
      _not_caching(directory, e)
    return loaded


class Csv(ImageFolder):
  """The images under spec.path, labelled by the CSV file spec.csv."""

  def _read_index(self) -> tuple[image_folder.FolderIndex, list[tuple[str, str]]]:
    spec = self.spec
    if not spec.csv:
      raise UserError("config.data.name='csv' needs --config.data.csv=FILE.csv (file and label "
                      'columns) and --config.data.path=DIR (the images).')
    return csv_labels.index_csv(spec.csv, _directory(spec), spec.csv_file_column,
                                spec.csv_label_column, tuple(spec.class_names))


class Tfds(Source):
  """A TFDS image-classification dataset, read through `tfds.data_source` and decoded per example
  (or read from its decoded cache, written on first use beside the TFDS data)."""
  local = False

  @functools.cached_property
  def _features(self) -> tuple[tuple[str, ...], tuple]:
    return tfds_source.describe(self.spec.name, self.spec.tfds_data_dir)

  @functools.cached_property
  def splits(self) -> tuple[str, ...]:
    return tfds_source.split_names(self.spec.name, self.spec.tfds_data_dir)

  def describe(self) -> DatasetInfo:
    class_names, (height, width, channels) = self._features
    if self.spec.image_size:
      height = width = self.spec.image_size
    elif height is None or width is None:
      raise UserError(f'{self.spec.name!r} images vary in size; set --config.data.image_size=N '
                      'to resize them to N×N (e.g. 160 for cats_vs_dogs).')
    return DatasetInfo(self.spec.name, len(class_names), class_names, (height, width, channels))

  @property
  def prepare(self) -> stream.PrepareExample:
    """Resizes each example read from the TFDS files (a no-op on the decoded cache's)."""
    return stream.PrepareExample(self.spec.image_size, self.spec.resize)

  def open_split(self, split: str):
    """The split's decoded cache with spec.cache (written now if absent), else its TFDS files."""
    spec, prepare = self.spec, self.prepare
    source = tfds_source.open_split(spec.name, split, spec.tfds_data_dir, spec.download)
    if not spec.cache:
      return source
    directory, name = tfds_source.cache_name(spec.name, split, spec.tfds_data_dir, prepare,
                                             len(source))
    try:
      return npy_cache.write_or_open(directory, name, len(source),
                                     prepare(source[0])['image'].shape,
                                     lambda: stream.read_all(source, prepare, spec.workers))
    except OSError as e:
      _not_caching(directory, e)
      return source

  def load_split(self, split: str) -> Split:
    """The split read whole: from the decoded cache in one read, else decoded example by example."""
    source = self.open_split(split)
    if isinstance(source, npy_cache.NpySource):  # The decoded cache: one read, no decoding.
      return Split(np.load(source.images_path), source.labels)
    return tfds_source.load_split(source, self.prepare, self.spec.workers)


# Every source by DataSpec.name; any other name is a TFDS dataset.
SOURCES: dict[str, type[Source]] = {
    'digits': Digits,
    'image_folder': ImageFolder,
    'csv': Csv,
    'idx': Idx,
}


# TFDS datasets whose original files a system package installs, read from there when TFDS has not
# prepared its own copy: name -> (the source that reads the files, their directory, the package).
SYSTEM_COPIES = {
    'fashion_mnist': (Idx, '/usr/share/datasets/fashion-mnist', "Debian's dataset-fashion-mnist"),
}
_SAID_WHERE_FROM: set[str] = set()  # Datasets whose system copy this process has named already.


def open_source(spec: DataSpec) -> Source:
  """Returns the source `spec.name` names (a TFDS dataset if no other), opened but not read.

  A TFDS dataset that TFDS has not prepared (and may not download) but a system package has
  installed (`SYSTEM_COPIES`) is read from the package's files, and a line says so (once a
  process: a benchmark opens the dataset several times).
  """
  if spec.name in SOURCES:
    return SOURCES[spec.name](spec)
  if spec.name in SYSTEM_COPIES and not spec.download:
    source, directory, package = SYSTEM_COPIES[spec.name]
    if os.path.isdir(directory) and not tfds_source.is_prepared(spec.name, spec.tfds_data_dir):
      if spec.name not in _SAID_WHERE_FROM:
        _SAID_WHERE_FROM.add(spec.name)
        print(f'{spec.name}: TFDS has not prepared it, so reading the files of {package} in '
              f'{directory}.', flush=True)
      return source(dataclasses.replace(spec, path=directory))
  return Tfds(spec)
