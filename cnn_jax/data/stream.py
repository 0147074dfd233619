"""Batches read through grain from a random-access source, instead of from a split held in memory.

With `data.stream`, a TFDS dataset is read example by example from its ArrayRecord files
(`tfds.data_source`), decoded and resized as it is needed, in threads or in worker processes, so
a split never has to fit in host memory (cats_vs_dogs at 160 px is 1.8 GB decoded).

Order. Process p of P reads only its own shard, every P-th example (`[p::P]`), shuffles it with
grain's index shuffle (a new order each epoch, from (seed, epoch)) and cuts it into batches of B/P.
Batch k of the stream is a pure function of (seed, k), so a run resumed at step s starts the
stream at `[s:]` and sees exactly the batches an uninterrupted run would; no iterator state needs
saving. Batches run across epoch boundaries (the stream is one endless shuffled sequence).
"""

import dataclasses
import os
import signal
import uuid
from typing import Iterator

import grain
import numpy as np

from cnn_jax.data.dataset import DatasetInfo, Normalizer, Split
from cnn_jax.data.images import crop_center_square, resize_image

_READ_BATCH = 64  # Examples per read when a whole split is read (the cache, the normaliser).


@dataclasses.dataclass(frozen=True)
class PrepareExample:
  """Turns one source example into {'image': uint8 [S, S, C], 'label': int32}.

  A plain, picklable callable: grain sends it to its worker processes.
  """
  image_size: int = 0  # 0 keeps the image's own size.
  resize: str = 'squash'  # 'squash', or 'crop' the centre square first.

  def __call__(self, example: dict) -> dict:
    image = np.asarray(example['image'], np.uint8)
    if self.image_size:
      if self.resize == 'crop':
        image = crop_center_square(image)
      image = resize_image(image, self.image_size)
    return {'image': image, 'label': np.int32(example['label'])}


@dataclasses.dataclass(frozen=True)
class StreamedDataset:
  """A training and a held-out source, their metadata, normalisation and per-example step."""
  info: DatasetInfo
  train: object  # Random-access: len() and [i] -> {'image', 'label', ...}.
  eval: object
  normalizer: Normalizer
  prepare: PrepareExample


class ArraySource:
  """A split in host memory as a grain source (the sources without a random-access file format)."""

  def __init__(self, split: Split):
    self.split = split
    self.skipped = split.skipped

  def __len__(self) -> int:
    return len(self.split)

  def __getitem__(self, index: int) -> dict:
    return {'image': self.split.images[index], 'label': self.split.labels[index]}

  def gather(self, indices: np.ndarray) -> dict[str, np.ndarray]:
    """The examples at `indices` as one batch, by fancy indexing (already decoded and sized)."""
    return {'image': self.split.images[indices], 'label': self.split.labels[indices]}


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


@dataclasses.dataclass(frozen=True)
class ReadBatch:
  """Reads the examples at a batch of indices: {'image': [b, H, W, C], 'label': int32 [b]}.

  Grain shuffles and batches indices, and this runs once per batch, in grain's threads or worker
  processes: a decoded source gathers the batch in one indexing operation; a TFDS source reads,
  decodes and prepares each example. Images are raw uint8, or float32 model inputs when a
  normalizer is given: normalising a batch of 128 px images takes ~20 ms of memory traffic, which
  here runs beside the other reads instead of in the training loop.
  """
  source: object
  prepare: PrepareExample
  normalizer: Normalizer | None = None

  def __call__(self, indices) -> dict[str, np.ndarray]:
    indices = np.asarray(indices, np.int64)
    if hasattr(self.source, 'gather'):
      batch = self.source.gather(indices)
    else:
      prepared = [self.prepare(self.source[int(i)]) for i in indices]
      batch = {'image': np.stack([p['image'] for p in prepared]),
               'label': np.asarray([p['label'] for p in prepared], np.int32)}
    if self.normalizer is not None:
      batch = {**batch, 'image': self.normalizer(batch['image'])}
    return batch


def _read_options(threads: int, prefetch: int) -> grain.ReadOptions:
  threads = threads or os.cpu_count()
  # A buffer smaller than the thread count would leave threads idle.
  return grain.ReadOptions(num_threads=threads, prefetch_buffer_size=max(prefetch, threads))


def _shard_indices(count: int, shard: tuple[int, int]) -> grain.MapDataset:
  """The example indices process p of P reads, every P-th from p, in order."""
  index, processes = shard
  return grain.MapDataset.range(count)[index::processes]


def read_all(source, prepare: PrepareExample, threads: int = 0,
             indices: range | None = None) -> Iterator[dict[str, np.ndarray]]:
  """Yields the prepared examples at `indices` (default: all), in order, in batches of up to 64,
  read by `threads` threads at once (0 = one per CPU core)."""
  indices = indices if indices is not None else range(len(source))
  dataset = grain.MapDataset.range(indices.start, indices.stop, indices.step)
  dataset = dataset.batch(_READ_BATCH).map(ReadBatch(source, prepare))
  yield from dataset.to_iter_dataset(_read_options(threads, 2 * (threads or os.cpu_count() or 1)))


def fit_normalizer(source, prepare: PrepareExample, max_value: float,
                   threads: int = 0) -> Normalizer:
  """Fits the input normalisation on the same examples `Normalizer.fit` takes from a whole split
  in memory (every ⌈N/10,000⌉-th), so streaming and in-memory runs normalise identically."""
  rows = range(0, len(source), Normalizer.sample_stride(len(source)))
  sample = np.concatenate([batch['image'] for batch in read_all(source, prepare, threads, rows)])
  return Normalizer.fit(sample, max_value)


def write_npy_cache(source, prepare: PrepareExample, directory: str, name: str,
                    threads: int = 0) -> NpySource:
  """Decodes and resizes every example of `source` once into DIRECTORY/NAME.npy (memory-mapped
  afterwards) and returns the cached split; an existing cache is used as it is.

  The file appears under its final name only when complete (written aside, then renamed), so a
  killed run never leaves a half-written cache that a later run would trust.
  """
  images_path = os.path.join(directory, f'{name}.images.npy')
  labels_path = os.path.join(directory, f'{name}.labels.npy')
  if os.path.exists(images_path) and os.path.exists(labels_path):
    return NpySource(images_path, np.load(labels_path))
  os.makedirs(directory, exist_ok=True)
  shape = prepare(source[0])['image'].shape
  # Unique names: the processes of a multi-host run may write the same cache at the same time.
  partial = f'{images_path}.{uuid.uuid4().hex[:12]}.partial'
  images = np.lib.format.open_memmap(partial + '.npy', mode='w+', dtype=np.uint8,
                                     shape=(len(source), *shape))
  labels = np.empty(len(source), np.int32)
  start = 0
  for batch in read_all(source, prepare, threads):
    images[start:start + len(batch['label'])] = batch['image']
    labels[start:start + len(batch['label'])] = batch['label']
    start += len(batch['label'])
  images.flush()
  del images
  np.save(partial + '.labels.npy', labels)
  os.replace(partial + '.labels.npy', labels_path)
  os.replace(partial + '.npy', images_path)  # Last: the images' name marks a complete cache.
  return NpySource(images_path, labels)


def _iterate(dataset: grain.MapDataset, threads: int, worker_processes: int,
             prefetch: int) -> Iterator:
  """Iterates `dataset` with threads, and in worker processes if asked; closes them at the end."""
  iterable = dataset.to_iter_dataset(_read_options(threads, prefetch))
  if worker_processes:
    _let_grain_read_its_flags()
    iterable = iterable.mp_prefetch(grain.MultiprocessingOptions(
        num_workers=worker_processes, per_worker_buffer_size=prefetch),
        worker_init_fn=_ignore_interrupts)
  iterator = iter(iterable)
  try:
    yield from iterator
  finally:
    close = getattr(iterator, 'close', None)
    if close is not None:
      close()  # Stops the worker processes now rather than at garbage collection.


def _ignore_interrupts(worker_index: int, worker_count: int) -> None:
  """Runs first in each worker process: Ctrl-C reaches the whole process group, and the training
  process alone should answer it (it checkpoints, then closes the workers)."""
  del worker_index, worker_count
  signal.signal(signal.SIGINT, signal.SIG_IGN)


def _let_grain_read_its_flags() -> None:
  # grain's worker processes read absl flags of their own; outside an absl app (a notebook, a
  # test) nothing has parsed them, and reading one would raise. Their defaults are what we want.
  from absl import flags  # pylint: disable=g-import-not-at-top
  if not flags.FLAGS.is_parsed():
    flags.FLAGS.mark_as_parsed()


def train_batches(source, prepare: PrepareExample, normalizer: Normalizer, batch_size: int,
                  seed: int, start_step: int = 0, shard: tuple[int, int] = (0, 1),
                  threads: int = 0, worker_processes: int = 0,
                  prefetch: int = 4) -> Iterator[dict[str, np.ndarray]]:
  """Yields this process's rows of training batches start_step, start_step + 1, ... without end.

  Args:
    source: random-access examples ({'image', 'label'} dicts), e.g. a `tfds.data_source`.
    prepare: the per-example decode/resize step.
    normalizer: maps raw pixels to model inputs (applied to whole batches, where they are read).
    batch_size: the global batch; this process yields batch_size / shard count rows.
    seed: the shuffle seed.
    start_step: the first batch to yield (a resumed run's step).
    shard: (this process's index, number of processes).
    threads: decoding threads in this process; 0 = one per CPU core.
    worker_processes: decode in this many separate processes instead (grain's mp_prefetch).
    prefetch: batches prepared ahead, per worker.

  Yields:
    {'image': float32 [B/P, H, W, C], 'label': int32 [B/P]}.
  """
  dataset = (_shard_indices(len(source), shard)
             .shuffle(seed=seed % 2**32).repeat()  # A different shuffle for every epoch.
             .batch(batch_size // shard[1], drop_remainder=True)
             .map(ReadBatch(source, prepare, normalizer)))
  yield from _iterate(dataset[start_step:], threads, worker_processes, prefetch)


def eval_batches(source, prepare: PrepareExample, normalizer: Normalizer, batch_size: int,
                 shard: tuple[int, int] = (0, 1), threads: int = 0,
                 prefetch: int = 4) -> Iterator[dict[str, np.ndarray]]:
  """Yields this process's rows of eval batches covering its shard once, padded and masked.

  Every process yields the same number of batches (the eval step is collective): shards differ by
  at most one example, and a process that runs out pads with masked copies of an example.

  Yields:
    {'image': float32 [B/P, H, W, C], 'label': int32 [B/P], 'mask': float32 [B/P]}.
  """
  rows = batch_size // shard[1]
  per_process = -(-len(source) // shard[1])  # ⌈N/P⌉: the largest shard.
  num_batches = -(-per_process // rows)
  dataset = _shard_indices(len(source), shard).batch(rows).map(
      ReadBatch(source, prepare, normalizer))
  padding = normalizer(prepare(source[0])['image'][None])  # [1, H, W, C]
  batches = _iterate(dataset, threads, 0, prefetch)
  for _ in range(num_batches):
    batch = next(batches, {'image': padding[:0], 'label': np.zeros(0, np.int32)})
    real = len(batch['label'])
    pad = rows - real
    yield {'image': np.concatenate([batch['image'], np.repeat(padding, pad, 0)]),
           'label': np.concatenate([batch['label'], np.zeros(pad, np.int32)]),
           'mask': (np.arange(rows) < real).astype(np.float32)}
