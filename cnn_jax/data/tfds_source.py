"""TFDS image-classification datasets by name, read through `tfds.data_source` (no TensorFlow).

`tfds.data_source` gives random access to a dataset prepared in ArrayRecord format. This module
turns the absence of that (no network, wrong format, unknown name) into a message that says what to
do, and loads a split into host memory, resized to one shape.
"""

import numpy as np

from cnn_jax.data.dataset import Split
from cnn_jax.data.images import resize_image
from cnn_jax.errors import UserError

_HOW_TO_GET = """\
To prepare it on a machine with internet access (TensorFlow is needed only for cats_vs_dogs, whose
builder re-encodes its JPEGs with it: pip install -e '.[tfds-prepare]'):
    python -c "import tensorflow_datasets as tfds; \\
tfds.builder('{name}', data_dir='DATA_DIR').download_and_prepare(file_format='array_record')"
then copy DATA_DIR/{name}/ to this machine and pass --config.data.tfds_data_dir=DATA_DIR, or run here
with --config.data.download=True if this machine can reach the internet."""


def _builder(name: str, data_dir: str | None):
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  try:
    return tfds.builder(name, data_dir=data_dir)
  except Exception as e:  # DatasetNotFoundError and friends carry TFDS's own suggestions.
    raise UserError(f"config.data.name={name!r} is neither 'digits' nor a TFDS dataset: "
                    f'{str(e).strip().splitlines()[0]}') from None


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
    first_line = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    raise UserError(
        f'Could not open split {split!r} of TFDS dataset {name!r} in {where} '
        f'(download={download}): {first_line}\n' + _HOW_TO_GET.format(name=name)) from None


def load_split(name: str, split: str, data_dir: str | None, download: bool,
               image_size: int) -> Split:
  """Reads a whole split into memory as uint8 [N, H, W, C] images and int32 [N] labels.

  Args:
    name: TFDS dataset name, e.g. 'mnist'.
    split: TFDS split, slicing allowed ('train[:80%]').
    data_dir: where the prepared dataset lives; None for TFDS's default.
    download: whether TFDS may download and prepare a missing dataset.
    image_size: resize every image to image_size × image_size; 0 keeps the native size, which
      then has to be the same for all images.
  """
  source = _data_source(name, split, data_dir, download)
  images, labels = [], []
  for i in range(len(source)):
    example = source[i]
    image = np.asarray(example['image'], np.uint8)
    images.append(resize_image(image, image_size) if image_size else image)
    labels.append(int(example['label']))
  if not images:
    raise UserError(f'Split {split!r} of {name!r} is empty; check config.data.*_split.')
  shapes = {im.shape for im in images}
  if len(shapes) > 1:
    raise UserError(f'{name!r} images come in {len(shapes)} sizes (e.g. {sorted(shapes)[:3]}); '
                    'set --config.data.image_size=N to resize them all to N×N.')
  return Split(np.stack(images), np.asarray(labels, np.int32))
