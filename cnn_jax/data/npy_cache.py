"""A decoded, resized split as two .npy files (images memory-mapped, labels), written once.

Used for TFDS datasets (`data.cache`): the first run decodes every example into
DIR/NAME.images.npy and DIR/NAME.labels.npy; later runs, and later epochs of a streamed run, read
the pixels from the memory map without decoding or holding the split in memory.
"""

import os
import uuid
from typing import Callable, Iterable

import numpy as np

from cnn_jax.errors import UserError


class NpySource:
  """Decoded images in a .npy file, memory-mapped: random access without reading the whole file.

  Only the paths are pickled, so worker processes map the file themselves instead of receiving a
  copy of it.
  """
  skipped = ()

  def __init__(self, images_path: str, labels: np.ndarray):
    self.images_path, self.labels = images_path, labels
    self._images = None

  def __getstate__(self):
    return {'images_path': self.images_path, 'labels': self.labels, '_images': None}

  @property
  def images(self) -> np.ndarray:
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


def _open(images_path: str, labels_path: str, count: int) -> NpySource:
  """Opens an existing cache, checking it holds `count` examples."""
  problem = None
  try:
    labels = np.load(labels_path)
    images = np.load(images_path, mmap_mode='r')
    if len(images) != count or len(labels) != count:
      problem = f'it holds {len(images):,} images and {len(labels):,} labels, not {count:,}'
  except (OSError, ValueError) as e:  # Truncated or overwritten files.
    problem = str(e)
  if problem:
    raise UserError(f'The decoded-image cache {images_path} is damaged ({problem}). Delete '
                    f'{os.path.dirname(images_path)} and run again to rebuild it, or set '
                    '--config.data.cache=False.')
  return NpySource(images_path, labels)


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


def write_or_open(directory: str, name: str, count: int, image_shape: tuple[int, ...],
                  read_batches: Callable[[], Iterable[dict[str, np.ndarray]]]) -> NpySource:
  """Returns the cached split DIRECTORY/NAME, writing it first from `read_batches()` (uint8
  {'image': [b, *image_shape], 'label': [b]} batches, `count` examples in order) if absent.

  Files are written under unique temporary names and renamed when complete (labels, then images,
  whose name marks a complete cache), so a killed run never leaves a cache that a later run would
  trust, and the processes of a multi-host run can write the same cache at once. A failure
  removes the temporary files. The images are written sequentially, not through a memory map,
  so a full disk is an OSError here rather than a crash later.

  Raises:
    UserError: an existing cache is damaged.
    OSError: the directory is not writable, or the disk is full.
  """
  images_path = os.path.join(directory, f'{name}.images.npy')
  labels_path = os.path.join(directory, f'{name}.labels.npy')
  if os.path.exists(images_path) and os.path.exists(labels_path):
    return _open(images_path, labels_path, count)
  os.makedirs(directory, exist_ok=True)
  partial = os.path.join(directory, f'.{name}.{uuid.uuid4().hex[:12]}.partial')
  partial_images, partial_labels = partial + '.images.npy', partial + '.labels.npy'
  try:
    labels = np.empty(count, np.int32)
    written = 0
    with open(partial_images, 'wb') as f:
      np.lib.format.write_array_header_2_0(f, {
          'descr': np.lib.format.dtype_to_descr(np.dtype(np.uint8)), 'fortran_order': False,
          'shape': (count, *image_shape)})
      for batch in read_batches():
        f.write(np.ascontiguousarray(batch['image'], np.uint8).tobytes())
        labels[written:written + len(batch['label'])] = batch['label']
        written += len(batch['label'])
    if written != count:
      raise ValueError(f'read {written} examples for a cache of {count}')
    np.save(partial_labels, labels)
    _publish(partial_labels, labels_path)
    _publish(partial_images, images_path)
  except BaseException:
    for path in (partial_images, partial_labels):
      if os.path.exists(path):
        os.remove(path)
    raise
  return _open(images_path, labels_path, count)
