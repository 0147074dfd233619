"""MNIST-format IDX files from a directory: MNIST, Fashion-MNIST and EMNIST ship in this format.

    DIR/train-images-idx3-ubyte[.gz]   DIR/train-labels-idx1-ubyte[.gz]
    DIR/t10k-images-idx3-ubyte[.gz]    DIR/t10k-labels-idx1-ubyte[.gz]

An IDX file is a 4-byte magic number (two zero bytes, a type code, the number of dimensions), the
dimensions as big-endian int32, then the values. Splits are 'train' and 'test' (the t10k files).

MNIST and Fashion-MNIST are recognised by their content, not their file names or compression
(Debian's dataset-fashion-mnist re-compresses Zalando's files), so their classes get their names.
"""

import gzip
import os

import numpy as np

from cnn_jax.data.dataset import Split
from cnn_jax.errors import UserError

SPLITS = {'train': 'train', 'test': 't10k'}
_UBYTE = 0x08  # The only type MNIST-style image and label files use.
FASHION_MNIST_CLASSES = ('T-shirt/top', 'Trouser', 'Pullover', 'Dress', 'Coat', 'Sandal', 'Shirt',
                         'Sneaker', 'Bag', 'Ankle boot')
# Datasets recognised by their training labels: how many there are, and the first 16 of them in
# the order their publishers ship them (the datasets' names are TFDS's).
KNOWN = {
    'mnist': (60_000, (5, 0, 4, 1, 9, 2, 1, 3, 1, 4, 3, 5, 3, 6, 1, 7),
              tuple(str(digit) for digit in range(10))),
    'fashion_mnist': (60_000, (9, 0, 0, 3, 0, 2, 7, 2, 5, 5, 0, 9, 5, 5, 7, 9),
                      FASHION_MNIST_CLASSES),
}


def _open(path: str):
  return gzip.open(path, 'rb') if path.endswith('.gz') else open(path, 'rb')


def read_idx(path: str) -> np.ndarray:
  """Returns the uint8 array stored in an IDX file (gzipped or not).

  Raises:
    UserError: the file is not an IDX file of unsigned bytes, or is shorter than its header says.
  """
  try:
    with _open(path) as f:
      raw = f.read()
  except (OSError, EOFError) as e:
    raise UserError(f'cannot read {path}: {e}') from None
  if len(raw) < 4 or raw[0] != 0 or raw[1] != 0:
    raise UserError(f'{path} is not an IDX file (bad magic number {raw[:4].hex()}).')
  if raw[2] != _UBYTE:
    raise UserError(f'{path} holds IDX type 0x{raw[2]:02x}; only unsigned bytes (0x08) are read.')
  ndim = raw[3]
  shape = tuple(int(d) for d in np.frombuffer(raw, '>i4', count=ndim, offset=4))
  data = np.frombuffer(raw, np.uint8, offset=4 + 4 * ndim)
  if data.size != int(np.prod(shape)):
    raise UserError(f'{path} is truncated or padded: its header says {shape} = {np.prod(shape):,} '
                    f'values, it holds {data.size:,}.')
  return data.reshape(shape)


def _find(directory: str, prefix: str, kind: str) -> str:
  for suffix in ('', '.gz'):
    for separator in ('-', '.'):  # Some mirrors write 'train-images.idx3-ubyte'.
      path = os.path.join(directory, f'{prefix}-{kind}{separator}idx{3 if kind == "images" else 1}'
                          f'-ubyte{suffix}')
      if os.path.exists(path):
        return path
  raise UserError(f'no {prefix}-{kind}-idx{3 if kind == "images" else 1}-ubyte[.gz] in '
                  f'{directory!r}; config.data.path must be a directory of MNIST-format IDX files.')


def load_split(directory: str, split: str) -> Split:
  """Loads split 'train' or 'test' of the IDX files in `directory` as [N, H, W, 1] uint8 images."""
  if split not in SPLITS:
    raise UserError(f"IDX files have splits {tuple(SPLITS)}, and 'validation' held out of the "
                    f'training split; got {split!r}.')
  images = read_idx(_find(directory, SPLITS[split], 'images'))
  labels = read_idx(_find(directory, SPLITS[split], 'labels'))
  if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
    raise UserError(f'{directory}: expected images [N, H, W] and labels [N], found '
                    f'{images.shape} and {labels.shape}.')
  return Split(images[..., None], labels.astype(np.int32))


def _image_shape(path: str) -> tuple[int, ...]:
  """The dimensions in an IDX file's header, without reading its values."""
  with _open(path) as f:
    header = f.read(4)
    if len(header) < 4 or header[0] != 0 or header[1] != 0:
      raise UserError(f'{path} is not an IDX file (bad magic number {header.hex()}).')
    return tuple(int(d) for d in np.frombuffer(f.read(4 * header[3]), '>i4'))


def describe(directory: str) -> tuple[str | None, tuple[str, ...], tuple[int, int, int]]:
  """Returns (the dataset's name if it is a known one, else None; class names; image shape) from
  the training labels and the images' header.

  Only the small labels file is read; the images are read when a split is loaded. Classes of an
  unknown set are named by their numbers.
  """
  shape = _image_shape(_find(directory, SPLITS['train'], 'images'))
  labels = read_idx(_find(directory, SPLITS['train'], 'labels'))
  if len(shape) != 3 or labels.ndim != 1:
    raise UserError(f'{directory}: expected images [N, H, W] and labels [N], found {shape} and '
                    f'{labels.shape}.')
  for name, (count, first, class_names) in KNOWN.items():
    if len(labels) == count and tuple(labels[:len(first)]) == first:
      return name, class_names, (*shape[1:], 1)
  return None, tuple(str(i) for i in range(int(labels.max()) + 1)), (*shape[1:], 1)
