"""The decoded-image cache: a decoded, resized split as .npy files, written once, memory-mapped.

Every source that decodes images caches them in this one format, so a second run (and every
epoch of a streamed run) reads pixels instead of decoding them again: TFDS datasets beside their
data, image folders and CSV datasets in PATH/.cnn_jax_cache. A cached split NAME in DIR is

    DIR/NAME.labels.npy     int32 [N]
    DIR/NAME.skipped.json   [[file, reason], ...]: the unreadable files left out (only if any)
    DIR/NAME.images.npy     uint8 [N, H, W, C], published last: its name marks a complete cache

NAME identifies the content (`cache_key` for files on disk), so nothing stale is ever read.
"""

import hashlib
import json
import os
import uuid
from typing import Callable, Iterable

import numpy as np

from cnn_jax.errors import UserError


def cache_key(files: list[str], **settings) -> str:
  """Returns a hex digest of the files' identities (path, size, mtime) and the decode settings:
  touching a file or changing a setting gives a new cache name. An entry that cannot be looked at
  (a broken or looping link) counts as such: decoding lists it among the unreadable files."""
  digest = hashlib.sha256(json.dumps(settings, sort_keys=True).encode())
  for path in files:
    try:
      stat = os.stat(path)
    except OSError as e:
      digest.update(f'{path}\0{e.errno}\n'.encode())
      continue
    digest.update(f'{path}\0{stat.st_size}\0{stat.st_mtime_ns}\n'.encode())
  return digest.hexdigest()[:20]


class NpySource:
  """Decoded images in a .npy file, memory-mapped: random access without reading the whole file.

  Only the paths are pickled, so worker processes map the file themselves instead of receiving a
  copy of it.
  """

  def __init__(self, images_path: str, labels: np.ndarray,
               skipped: tuple[tuple[str, str], ...] = ()):
    self.images_path, self.labels, self.skipped = images_path, labels, skipped
    self._images = None

  def __getstate__(self):
    return {**self.__dict__, '_images': None}

  @property
  def images(self) -> np.ndarray:
    """uint8 [N, H, W, C], mapped on first use (in each process that reads it)."""
    if self._images is None:
      self._images = np.load(self.images_path, mmap_mode='r')
    return self._images

  def __len__(self) -> int:
    return len(self.labels)

  def __getitem__(self, index: int) -> dict:
    return {'image': np.asarray(self.images[index]), 'label': self.labels[index]}

  def gather(self, indices: np.ndarray) -> dict[str, np.ndarray]:
    """The examples at `indices` as one batch, read from the memory map (decoded and sized)."""
    return {'image': self.images[indices], 'label': self.labels[indices]}


def _paths(directory: str, name: str) -> tuple[str, str, str]:
  """(images, labels, skipped) paths of cached split `name`."""
  stem = os.path.join(directory, name)
  return f'{stem}.images.npy', f'{stem}.labels.npy', f'{stem}.skipped.json'


def _open(directory: str, name: str, count: int) -> NpySource:
  """Opens an existing cache, checking it holds `count` examples less the skipped ones."""
  images_path, labels_path, skipped_path = _paths(directory, name)
  problem = None
  try:
    skipped = ()
    if os.path.exists(skipped_path):
      with open(skipped_path, encoding='utf-8') as f:
        skipped = tuple((str(file), str(reason)) for file, reason in json.load(f))
    labels = np.load(labels_path)
    images = np.load(images_path, mmap_mode='r')
    kept = count - len(skipped)
    if len(images) != kept or len(labels) != kept:
      problem = (f'it holds {len(images):,} images and {len(labels):,} labels, not {kept:,} '
                 f'({count:,} less {len(skipped):,} skipped)')
  except (OSError, ValueError, TypeError) as e:  # Truncated, overwritten or hand-edited files.
    problem = str(e)
  if problem:
    raise UserError(f'The decoded-image cache {images_path} is damaged ({problem}). Delete '
                    f'{directory} and run again to rebuild it, or set --config.data.cache=False.')
  return NpySource(images_path, labels, skipped)


def open_cached(directory: str, name: str, count: int) -> NpySource | None:
  """Returns the complete cached split DIRECTORY/NAME of `count` examples (the skipped ones
  included), or None if it has not been written.

  Raises:
    UserError: the cache is damaged.
  """
  images_path, labels_path, _ = _paths(directory, name)
  if os.path.exists(images_path) and os.path.exists(labels_path):
    return _open(directory, name, count)
  return None


def _publish(partial: str, final: str) -> None:
  """Gives `partial` its final name unless another process got there first (then keeps theirs,
  which it may have mapped already: replacing it under a reader could break the reader on NFS)."""
  try:
    os.link(partial, final)
  except FileExistsError:
    pass
  except OSError:  # A filesystem without hard links.
    os.replace(partial, final)
    return
  os.remove(partial)


def _write_images(path: str, count: int, image_shape: tuple[int, ...],
                  batches: Iterable[dict[str, np.ndarray]]) -> np.ndarray:
  """Writes the images of `batches` to the .npy file `path`, sequentially (so a full disk is an
  OSError here rather than a crash later in a memory map); returns their labels."""
  labels = np.empty(count, np.int32)
  written = 0
  with open(path, 'wb') as f:
    np.lib.format.write_array_header_2_0(f, {
        'descr': np.lib.format.dtype_to_descr(np.dtype(np.uint8)), 'fortran_order': False,
        'shape': (count, *image_shape)})
    for batch in batches:
      f.write(np.ascontiguousarray(batch['image'], np.uint8).tobytes())
      labels[written:written + len(batch['label'])] = batch['label']
      written += len(batch['label'])
  if written != count:
    raise ValueError(f'read {written} examples for a cache of {count}')
  return labels


def write(directory: str, name: str, count: int, image_shape: tuple[int, ...],
          read_batches: Callable[[], Iterable[dict[str, np.ndarray]]],
          skipped: tuple[tuple[str, str], ...] = ()) -> NpySource:
  """Writes the cached split DIRECTORY/NAME from `read_batches()` (uint8 {'image': [b,
  *image_shape], 'label': [b]} batches, in order) and returns it opened.

  `count` is the split's size with the `skipped` (file, reason) pairs included: the batches hold
  count − len(skipped) examples. Files are written under unique temporary names and renamed when
  complete (labels, the skipped list, then the images), so a killed run never leaves a cache that
  a later run would trust, and the processes of a multi-host run can write the same cache at
  once. A failure removes the temporary files.

  Raises:
    OSError: the directory is not writable, or the disk is full.
  """
  os.makedirs(directory, exist_ok=True)
  partials = _paths(directory, f'.{name}.{uuid.uuid4().hex[:12]}.partial')
  try:
    labels = _write_images(partials[0], count - len(skipped), image_shape, read_batches())
    np.save(partials[1], labels)
    if skipped:
      with open(partials[2], 'w', encoding='utf-8') as f:
        json.dump([list(pair) for pair in skipped], f)
    for partial, final in reversed(list(zip(partials, _paths(directory, name)))):
      if os.path.exists(partial):
        _publish(partial, final)  # The images last: their name marks a complete cache.
  except BaseException:
    for path in partials:
      if os.path.exists(path):
        os.remove(path)
    raise
  return _open(directory, name, count)


def write_or_open(directory: str, name: str, count: int, image_shape: tuple[int, ...],
                  read_batches: Callable[[], Iterable[dict[str, np.ndarray]]]) -> NpySource:
  """Returns the cached split DIRECTORY/NAME of `count` examples, writing it first from
  `read_batches()` (see `write`) if absent.

  Raises:
    UserError: an existing cache is damaged.
    OSError: the directory is not writable, or the disk is full.
  """
  cached = open_cached(directory, name, count)
  return cached if cached is not None else write(directory, name, count, image_shape,
                                                  read_batches)
