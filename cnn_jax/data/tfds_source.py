"""TFDS image-classification datasets by name, read through `tfds.data_source` (no TensorFlow).

`tfds.data_source` gives random access to a dataset prepared in ArrayRecord format. This module
turns the absence of that (no network, wrong format, unknown name) into a message that says what to
do, opens a split as a random-access source, and loads a split into host memory.
"""

import errno
import hashlib
import os
import re
import socket
import urllib.error

import numpy as np

from cnn_jax.data.dataset import Split
from cnn_jax.data.stream import PrepareExample, read_all
from cnn_jax.errors import UserError

_HOW_TO_GET = """\
To prepare it on a machine with internet access (TFDS unpacks the downloads with TensorFlow, which
cnn_jax installs only on request: pip install -e '.[tfds-prepare]'):
    python -c "import tensorflow_datasets as tfds; \\
tfds.builder('{name}', data_dir='DATA_DIR').download_and_prepare(file_format='array_record')"
then copy DATA_DIR/{name}/ to this machine and pass --config.data.tfds_data_dir=DATA_DIR"""
_OR_DOWNLOAD = (', or run here with --config.data.download=True if this machine can reach the '
                'internet.')
_NETWORK_ERRORS = (ConnectionError, socket.gaierror, socket.timeout, urllib.error.URLError)


def _cause(error: BaseException) -> str:
  """What went wrong underneath a TFDS error, said plainly: a missing package, no network, a full
  disk; else the error's own first line."""
  seen = error
  while seen is not None:
    if isinstance(seen, ModuleNotFoundError):
      if (seen.name or '').split('.')[0] == 'tensorflow':
        return "TFDS needs TensorFlow to prepare this dataset: pip install -e '.[tfds-prepare]'"
      return f'a package TFDS needs is missing: pip install {seen.name}'
    if isinstance(seen, OSError) and seen.errno == errno.ENOSPC:
      return f'no space left on the device: {seen}'
    if isinstance(seen, _NETWORK_ERRORS) or 'ConnectionError' in type(seen).__name__:
      return f'could not reach the download server (no network?): {seen}'
    seen = seen.__cause__ or seen.__context__
  text = str(error).strip()
  return text.splitlines()[0] if text else type(error).__name__


def _builder(name: str, data_dir: str | None):
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  try:
    return tfds.builder(name, data_dir=data_dir)
  except Exception as e:  # DatasetNotFoundError and friends carry TFDS's own suggestions.
    raise UserError(f"config.data.name={name!r} is neither 'digits' nor a TFDS dataset: "
                    f'{str(e).strip().splitlines()[0]}') from None


def split_names(name: str, data_dir: str | None) -> tuple[str, ...]:
  """The names of the dataset's splits, from its metadata."""
  return tuple(_builder(name, data_dir).info.splits)


def is_prepared(name: str, data_dir: str | None) -> bool:
  """Whether TFDS has the dataset `name` prepared in `data_dir` (or its default data dir)."""
  return _builder(name, data_dir).is_prepared()


def describe(name: str, data_dir: str | None) -> tuple[tuple[str, ...], tuple]:
  """Returns (class_names, image_shape) from the dataset's metadata, without reading examples.

  image_shape is (H, W, C) with None for a side that varies between images (cats_vs_dogs).

  Raises:
    UserError: the name is unknown or the dataset has no 'image' and class 'label' features.
  """
  features = _builder(name, data_dir).info.features
  if 'image' not in features or 'label' not in features or not hasattr(
      features['label'], 'num_classes'):
    raise UserError(f'TFDS dataset {name!r} is not an image-classification dataset: cnn_jax needs '
                    f"an 'image' feature and a class 'label' feature; it has {list(features)}.")
  label = features['label']
  names = tuple(label.names) if label.names else tuple(str(i) for i in range(label.num_classes))
  return names, tuple(features['image'].shape)


def _data_source(name: str, split: str, data_dir: str | None, download: bool):
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  try:
    return tfds.data_source(name, split=split, data_dir=data_dir, download=download)
  except Exception as e:  # TFDS raises several unrelated types for "not there".
    where = data_dir or "TFDS's default data dir (~/tensorflow_datasets)"
    raise UserError(
        f'Could not open split {split!r} of TFDS dataset {name!r} in {where} '
        f'(download={download}): {_cause(e)}\n' + _HOW_TO_GET.format(name=name)
        + ('.' if download else _OR_DOWNLOAD)) from None


def open_split(name: str, split: str, data_dir: str | None, download: bool):
  """Returns the split as a random-access source of example dicts ('image', 'label', ...).

  Raises:
    UserError: the dataset is not there (with how to get it), or the split is empty.
  """
  source = _data_source(name, split, data_dir, download)
  if not len(source):
    raise UserError(f'Split {split!r} of {name!r} is empty; check config.data.*_split.')
  return source


def cache_name(name: str, split: str, data_dir: str | None, prepare: PrepareExample,
               num_examples: int) -> tuple[str, str]:
  """Returns (directory, file stem) of the decoded cache of a split prepared by `prepare`.

  A prepared TFDS version never changes, so name, version, split, size and resize mode identify
  the decoded images; the example count guards against a re-prepared dataset of another size.
  """
  version = str(_builder(name, data_dir).info.version)
  root = data_dir or os.environ.get('TFDS_DATA_DIR') or os.path.expanduser('~/tensorflow_datasets')
  # Readable, plus a hash: 'train[:50%]' and 'train[50%:]' read alike once sanitised.
  stem = (re.sub(r'[^A-Za-z0-9_.-]+', '_', split).strip('_') + '-'
          + hashlib.sha256(split.encode()).hexdigest()[:8])
  size = f'{prepare.image_size}px-{prepare.resize}' if prepare.image_size else 'native'
  return (os.path.join(root, 'cnn_jax_cache', name, version),
          f'{stem}-{size}-{num_examples}')


def load_split(source, prepare: PrepareExample, threads: int = 0) -> Split:
  """Reads a whole split into memory as uint8 [N, H, W, C] images and int32 [N] labels.

  Args:
    source: the split, from `open_split`.
    prepare: the per-example resize, the same one a streamed run applies; images of varying
      size need an image_size (`describe` has checked that).
    threads: decoding threads; 0 = one per CPU core.
  """
  batches = list(read_all(source, prepare, threads))
  return Split(np.concatenate([b['image'] for b in batches]),
               np.concatenate([b['label'] for b in batches]).astype(np.int32))
