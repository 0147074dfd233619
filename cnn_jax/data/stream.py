"""Batches read through grain from a random-access source, instead of from a split held in memory.

grain is imported where it is used: a run that holds its splits in memory never loads it.

With `data.stream`, a TFDS dataset is read from its ArrayRecord files (`tfds.data_source`), each
batch decoded and resized when it is needed, in threads or in worker processes, or gathered from
its decoded cache (`npy_cache`), so a split never has to fit in host memory (cats_vs_dogs at
160 px is 1.8 GB decoded).

Order. grain shuffles the example indices anew each epoch, from the seed alone, and cuts the
endless shuffled sequence into batches of B (batches run across epoch boundaries). Batch k is a
pure function of (seed, k): a run resumed at step s starts the stream at `[s:]` and sees exactly
the batches an uninterrupted run would, with no iterator state to save, on any number of
processes. Each process reads only its own rows of each batch.
"""

import dataclasses
import os
import signal
from typing import TYPE_CHECKING, Iterator

import numpy as np
from absl import flags

from cnn_jax.data.dataset import DatasetInfo, Normalizer, Split
from cnn_jax.data.images import crop_center_square, resize_image

if TYPE_CHECKING:  # For the annotations only: grain itself is imported where it runs.
  import grain

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
  """A training, a held-out and an optional test source, their metadata, normalisation and
  per-example step."""
  info: DatasetInfo
  train: object  # Random-access: len() and [i] -> {'image', 'label', ...}.
  eval: object
  normalizer: Normalizer
  prepare: PrepareExample
  test: object | None = None


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


class Subset:
  """The examples of a random-access source at `indices`, in that order (a carved-out split)."""

  def __init__(self, source, indices: np.ndarray):
    self.source, self.indices = source, np.asarray(indices, np.int64)
    self.skipped = getattr(source, 'skipped', ())

  def __len__(self) -> int:
    return len(self.indices)

  def __getitem__(self, index: int) -> dict:
    return self.source[int(self.indices[index])]


class GatheringSubset(Subset):
  """A Subset of a source that reads whole batches at once (decoded already)."""

  def gather(self, indices: np.ndarray) -> dict[str, np.ndarray]:
    return self.source.gather(self.indices[np.asarray(indices, np.int64)])


def subset(source, indices: np.ndarray) -> Subset:
  """The examples of `source` at `indices`, as a source of the same kind."""
  return (GatheringSubset if hasattr(source, 'gather') else Subset)(source, indices)


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


def _read_options(threads: int, prefetch: int) -> 'grain.ReadOptions':
  # A buffer smaller than the thread count would leave threads idle.
  import grain  # pylint: disable=g-import-not-at-top  # Only runs that stream pay for it.
  return grain.ReadOptions(num_threads=threads, prefetch_buffer_size=max(prefetch, threads))


def _shuffle_seed(seed: int) -> int:
  """grain's shuffle seed for `seed`. grain shuffles epoch e with (seed + e), so seeds 0 and 1
  used as they are would share all but one epoch's order; a hash keeps runs of nearby seeds
  independent."""
  return int(np.random.SeedSequence(seed % 2**64).generate_state(1)[0])


@dataclasses.dataclass(frozen=True)
class TakeRows:
  """Process p of P's rows of a global batch of indices: rows p·B/P to (p+1)·B/P."""
  index: int
  count: int

  def __call__(self, indices: np.ndarray) -> np.ndarray:
    rows = len(indices) // self.count
    return indices[self.index * rows:(self.index + 1) * rows]


def _shard_indices(count: int, shard: tuple[int, int]) -> 'grain.MapDataset':
  """The example indices process p of P reads, every P-th from p, in order."""
  index, processes = shard
  import grain  # pylint: disable=g-import-not-at-top  # Only runs that stream pay for it.
  return grain.MapDataset.range(count)[index::processes]


def read_all(source, prepare: PrepareExample, threads: int = 0,
             indices: range | None = None) -> Iterator[dict[str, np.ndarray]]:
  """Yields the prepared examples at `indices` (default: all), in order, in batches of up to 64,
  read by `threads` threads at once (0 = one per CPU core)."""
  indices = indices if indices is not None else range(len(source))
  import grain  # pylint: disable=g-import-not-at-top  # Only runs that stream pay for it.
  dataset = grain.MapDataset.range(indices.start, indices.stop, indices.step)
  dataset = dataset.batch(_READ_BATCH).map(ReadBatch(source, prepare))
  threads = threads or os.cpu_count()
  yield from dataset.to_iter_dataset(_read_options(threads, 2 * threads))


def fit_normalizer(source, prepare: PrepareExample, max_value: float,
                   threads: int = 0) -> Normalizer:
  """Fits the input normalisation on the examples `Normalizer.fit` takes from a whole split in
  memory (every ⌈N/10,000⌉-th), so streaming and in-memory runs normalise alike; the sample is
  read batch by batch, never held whole."""
  rows = range(0, len(source), Normalizer.sample_stride(len(source)))
  return Normalizer.fit_batches((batch['image'] for batch in read_all(source, prepare, threads,
                                                                       rows)), max_value)


def _iterate(dataset: 'grain.MapDataset', threads: int, worker_processes: int,
             prefetch: int) -> Iterator:
  """Iterates `dataset` with threads, and in worker processes if asked; closes them at the end.

  threads 0 means one per CPU core in this process, or one per worker process.
  """
  threads = threads or (1 if worker_processes else os.cpu_count())
  iterable = dataset.to_iter_dataset(_read_options(threads, prefetch))
  if worker_processes:
    import grain  # pylint: disable=g-import-not-at-top  # Only runs that stream pay for it.
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
  # grain reads its absl flags when it starts worker processes (and passes them on to them);
  # outside an absl app (a notebook, a test) nothing has parsed them, and reading one would
  # raise. Their defaults are what we want.
  if not flags.FLAGS.is_parsed():
    flags.FLAGS.mark_as_parsed()


def train_batches(source, prepare: PrepareExample, normalizer: Normalizer, batch_size: int,
                  seed: int, start_step: int = 0, shard: tuple[int, int] = (0, 1),
                  threads: int = 0, worker_processes: int = 0,
                  prefetch: int = 4) -> Iterator[dict[str, np.ndarray]]:
  """Yields this process's rows of training batches start_step, start_step + 1, ... without end.

  Batch k is the k-th slice of B indices of one endless sequence: every epoch a new shuffle of
  all N examples, drawn from the seed alone. Process p reads, decodes and normalises only its
  rows of each batch, so the global batches are the same for any number of processes.

  Args:
    source: random-access examples ({'image', 'label'} dicts), e.g. a `tfds.data_source`.
    prepare: the per-example decode/resize step.
    normalizer: maps raw pixels to model inputs (applied to whole batches, where they are read).
    batch_size: the global batch; this process yields batch_size / process count rows.
    seed: the shuffle seed.
    start_step: the first batch to yield (a resumed run's step).
    shard: (this process's index, number of processes).
    threads: reading threads (per worker process, with worker_processes); 0 = one per CPU core,
      or one per worker process.
    worker_processes: read in this many separate processes (grain's mp_prefetch).
    prefetch: batches read ahead (at least one per thread), per worker process.

  Yields:
    {'image': float32 [B/P, H, W, C], 'label': int32 [B/P]}.
  """
  import grain  # pylint: disable=g-import-not-at-top  # Only runs that stream pay for it.
  dataset = (grain.MapDataset.range(len(source))
             .shuffle(seed=_shuffle_seed(seed)).repeat()  # A different shuffle for every epoch.
             .batch(batch_size, drop_remainder=True)
             .map(TakeRows(*shard))
             .map(ReadBatch(source, prepare, normalizer)))
  yield from _iterate(dataset[start_step:], threads, worker_processes, prefetch)


def eval_shard_batches(source, prepare: PrepareExample, normalizer: Normalizer, batch_size: int,
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
