"""The in-memory dataset that every source produces, and the metadata a model needs."""

import dataclasses
from typing import Iterable

import numpy as np


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
  """What the rest of the code needs to know about a dataset, without its examples.

  Attributes:
    name: the dataset's name, e.g. 'digits' or 'mnist'.
    num_classes: number of labels; logits have this many entries.
    class_names: human-readable label names, index = label.
    image_shape: (H, W, C) of the images the model sees, after resizing.
  """
  name: str
  num_classes: int
  class_names: tuple[str, ...]
  image_shape: tuple[int, int, int]


@dataclasses.dataclass(frozen=True)
class Split:
  """One split held in host memory.

  Attributes:
    images: uint8 or float32 [N, H, W, C], raw pixel values (not yet normalised).
    labels: int32 [N].
    skipped: (file, reason) for each source file that could not be read and was left out.
  """
  images: np.ndarray
  labels: np.ndarray
  skipped: tuple[tuple[str, str], ...] = ()

  def __post_init__(self):
    if len(self.images) != len(self.labels):
      raise ValueError(f'{len(self.images)} images but {len(self.labels)} labels')

  def __len__(self):
    return len(self.labels)


@dataclasses.dataclass(frozen=True)
class Normalizer:
  """Maps raw pixels to the model's input: `(x / max_value - mean) / std` per channel.

  The statistics are measured on the training split, so every dataset is centred and scaled the
  same way without a hand-kept table of numbers.
  """
  max_value: float
  mean: tuple[float, ...]
  std: tuple[float, ...]

  @staticmethod
  def sample_stride(num_examples: int) -> int:
    """Every how many examples `fit` measures one: a fixed subsample of about 10,000 keeps it
    cheap on large splits and pins the moments to ~1e-3."""
    return max(1, num_examples // 10_000)

  @classmethod
  def fit(cls, images: np.ndarray, max_value: float) -> 'Normalizer':
    """Measures per-channel mean and std of `images` [N, H, W, C] scaled to [0, 1]."""
    return cls.fit_batches([images[::cls.sample_stride(len(images))]], max_value)

  @classmethod
  def fit_batches(cls, batches: Iterable[np.ndarray], max_value: float) -> 'Normalizer':
    """Measures per-channel mean and std over all images of `batches` ([b, H, W, C] each).

    Sums run over chunks of 64 images in float64, so neither a split nor a float64 copy of it is
    ever held whole (at 128 px, 10,000 images would take 4 GB as float64).
    """
    total = squares = 0.0
    count = 0
    for batch in batches:
      for start in range(0, len(batch), 64):
        chunk = batch[start:start + 64].reshape(-1, batch.shape[-1]).astype(np.float64)
        total = total + chunk.sum(axis=0)
        squares = squares + np.square(chunk).sum(axis=0)
        count += len(chunk)
    if not count:
      raise ValueError('no images to fit the normalisation on')
    mean = total / count
    std = np.sqrt(np.maximum(squares / count - np.square(mean), 0.0)) / max_value
    std = np.maximum(std, 1e-3)  # A constant channel must not divide by 0.
    return cls(float(max_value), tuple(map(float, mean / max_value)), tuple(map(float, std)))

  def __call__(self, images: np.ndarray) -> np.ndarray:
    """Returns float32 normalised images with the same shape as `images`."""
    scaled = images.astype(np.float32) / np.float32(self.max_value)
    return (scaled - np.asarray(self.mean, np.float32)) / np.asarray(self.std, np.float32)

  def lookup_table(self) -> np.ndarray:
    """float32 [256, C]: row v holds what `__call__` makes of pixel value v in each channel, bit
    for bit (each entry goes through the same float32 operations). uint8 images can then travel
    as they are, 4× fewer bytes, and be normalised where they are used by a lookup."""
    values = np.broadcast_to(np.arange(256, dtype=np.uint8)[:, None], (256, len(self.mean)))
    return self(values)


@dataclasses.dataclass(frozen=True)
class Dataset:
  """A training split, the held-out split evaluated during training (choices are made on it), an
  optional test split reported once at the end, their metadata and the input normalisation."""
  info: DatasetInfo
  train: Split
  eval: Split
  normalizer: Normalizer
  test: Split | None = None
