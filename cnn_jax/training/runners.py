"""The step runners: how a training step gets its batch, chosen once per run.

`HostBatches` runs one step per call on the next batch assembled on the host (or read by a
stream) and transferred ahead of the running step; `DeviceSplit` holds the training split on
the device and gathers each batch there, several steps per compiled call where the platform
gains from it. Both are called `runner(state, step, count) -> (state, [(metrics, steps)])`.
"""

import collections
import itertools
from typing import Callable, Iterator

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding

from cnn_jax import data
from cnn_jax.errors import UserError
from cnn_jax.runtime import distributed
from cnn_jax.training import steps


# ---- batches on the devices --------------------------------------------------------------------

def pixel_table(dataset) -> np.ndarray | None:
  """The table that normalises training images on the device (`normalize_on_device`)
  where the split in memory holds uint8 pixels; None where it does not, or for a stream (its
  reading threads or processes normalise)."""
  if isinstance(dataset, data.StreamedDataset) or dataset.train.images.dtype != np.uint8:
    return None
  return dataset.normalizer.lookup_table()


def device_train_batches(dataset, batch_size: int, seed: int, start_step: int,
                         sharding: NamedSharding, threads: int = 0, worker_processes: int = 0,
                         prefetch: int = 4, raw_pixels: bool = False) -> Iterator[dict]:
  """Yields global training batches start_step, start_step + 1, ... without end.

  From a split in memory, every process builds the same batch and keeps its rows, `prefetch`
  batches ahead of the one the loop takes, so the next transfers overlap the running step; with
  `raw_pixels`, its images stay as the split holds them (uint8, for `normalize_on_device`).
  From a stream, each process reads, decodes and shuffles only its own shard of the examples.
  """
  if isinstance(dataset, data.StreamedDataset):
    stream = data.stream.train_batches(
        dataset.train, dataset.prepare, dataset.normalizer, batch_size, seed, start_step,
        (jax.process_index(), jax.process_count()), threads, worker_processes, prefetch)
    try:
      for batch in stream:
        yield distributed.from_local(batch, sharding)
    finally:
      stream.close()  # Stops its worker processes however the loop ends.
  else:
    normalizer = None if raw_pixels else dataset.normalizer
    ahead = collections.deque()
    for step in itertools.count(start_step):
      ahead.append(distributed.to_global(
          data.train_batch(dataset.train, normalizer, batch_size, seed, step), sharding))
      if len(ahead) > prefetch:
        yield ahead.popleft()


def device_eval_batches(dataset, batch_size: int, sharding: NamedSharding, threads: int = 0,
                        split: str = 'eval') -> Iterator[dict]:
  """Yields global batches covering every example of the held-out split ('eval', or 'test') once,
  the last padded and masked."""
  examples = getattr(dataset, split)
  if isinstance(dataset, data.StreamedDataset):
    for batch in data.stream.eval_shard_batches(
        examples, dataset.prepare, dataset.normalizer, batch_size,
        (jax.process_index(), jax.process_count()), threads):
      yield distributed.from_local(batch, sharding)
  else:
    for batch in data.eval_batches(examples, dataset.normalizer, batch_size):
      yield distributed.to_global(batch, sharding)


# ---- the train step as the runners call it ------------------------------------------------------

def normalize_on_device(train_step: Callable, table: np.ndarray) -> Callable:
  """Returns `train_step` for batches whose images are uint8, as the split holds them: the step
  normalises them through `table` [256, C] (`data.Normalizer.lookup_table`), a lookup that gives
  the host's float32 values bit for bit, so training computes exactly the same numbers while a
  quarter of the bytes travel to the device."""
  def step(state: steps.TrainState, batch: steps.Batch) -> tuple[steps.TrainState, steps.Metrics]:
    pixels = batch['image'].astype(jnp.int32)  # [B, H, W, C]
    images = jnp.asarray(table)[pixels, jnp.arange(pixels.shape[-1])]
    return train_step(state, {**batch, 'image': images})
  return step


def gather_step(train_step: Callable) -> Callable:
  """Returns the pure `step(state, images, labels, index) -> (state, metrics)` for on-device data.

  `train_step` is a pure train step (`Steps.train`). `images` [N, H, W, C] and `labels` [N] are
  the whole normalised training split, already on the device; only the batch's indices [B]
  travel each step. The batch is gathered inside the same compiled program, so the host neither
  assembles nor copies images.
  """
  def step(state, images, labels, index):
    return train_step(state, {'image': images[index], 'label': labels[index]})
  return step


def scan_steps(train_step: Callable) -> Callable:
  """Returns the pure `scanned_train_steps(state, images, labels, index, count) -> (state,
  metrics)` that runs up to K steps in one compiled call.

  Like `gather_step`, but `index` is [B, K]: column k holds step k's batch, and
  `lax.scan` runs the steps inside one call, so the host dispatches once per K steps. Only the
  first `count` (≤ K, a traced number) steps train; the others leave the state as it is. A call
  that must end early, at a log, an evaluation or a save, is the same program: a run compiles
  one, whatever its cadence. The metrics come back stacked, [K] each, the last K − count zero.
  (The index is [B, K], not [K, B], so that it is sharded along its first axis like every batch.)
  """
  def scanned_train_steps(state, images, labels, index, count):
    def one_step(state, step_and_index):
      k, batch_index = step_and_index

      def train(state):
        return train_step(state, {'image': images[batch_index], 'label': labels[batch_index]})

      def skip(state):
        metrics = jax.eval_shape(lambda s: train(s)[1], state)
        return state, jax.tree.map(lambda m: jnp.zeros(m.shape, m.dtype), metrics)

      return jax.lax.cond(k < count, train, skip, state)
    steps = jnp.arange(index.shape[1])
    return jax.lax.scan(one_step, state, (steps, index.T))
  return scanned_train_steps


# ---- the runners --------------------------------------------------------------------------------

class HostBatches:
  """Runs one step per call on the next batch from the host (or from a stream); with a `table`
  (`pixel_table`), the batches' images are uint8 and the step normalises them."""

  def __init__(self, model_steps: steps.Steps, batches: Iterator[dict],
               table: np.ndarray | None = None):
    train_step = model_steps.train
    if table is not None:
      train_step = normalize_on_device(train_step, table)
    self._step = model_steps.jit_train(train_step)
    self._batches = batches

  @classmethod
  def from_dataset(cls, model_steps: steps.Steps, dataset, batch_size: int, seed: int,
                   start_step: int, sharding: NamedSharding, threads: int = 0,
                   worker_processes: int = 0, prefetch: int = 4) -> 'HostBatches':
    """Runs on `dataset`'s training batches from `start_step` on (`device_train_batches`); uint8
    pixels in memory travel as they are and the step normalises them (`pixel_table`)."""
    table = pixel_table(dataset)
    batches = device_train_batches(dataset, batch_size, seed, start_step, sharding, threads,
                                   worker_processes, prefetch, raw_pixels=table is not None)
    return cls(model_steps, batches, table)

  def __call__(self, state, step: int, count: int):
    """Returns (state, [(its metrics, 1)]) after one step."""
    del step, count  # Always one step: the batches come in order.
    state, metrics = self._step(state, next(self._batches))
    return state, [(metrics, 1)]

  def close(self) -> None:
    self._batches.close()


class DeviceSplit:
  """Runs steps on a training split held on the device: one step gathers its batch there, and
  several steps run in one compiled call (`lax.scan`); only indices leave the host. With a
  `table` (`pixel_table`), the split stays uint8 on the device, a quarter of the memory, and each
  step normalises its batch."""

  def __init__(self, model_steps: steps.Steps, dataset, batch_size: int, seed: int,
               sharding: NamedSharding, replicated: NamedSharding, steps_per_call: int,
               table: np.ndarray | None = None):
    train_step = model_steps.train
    if table is not None:
      train_step = normalize_on_device(train_step, table)
    self._split = _put_split_on_device(dataset.train,
                                       None if table is not None else dataset.normalizer,
                                       replicated)
    self._steps_per_call = steps_per_call
    wrap = gather_step if steps_per_call == 1 else scan_steps
    self._step = model_steps.jit_train(wrap(train_step))
    self._indices = lambda s: data.train_indices(len(dataset.train), batch_size, seed, s)
    self._sharding = sharding

  def __call__(self, state, step: int, count: int):
    """Returns (state, [(metrics, steps) of each call]) after steps `step` … `step + count − 1`.

    Every call is one compiled program, `steps_per_call` steps long: the dispatches end at every
    log, evaluation and save, so their lengths vary, and a scan of each length would be a new
    compilation (with autotuning on a GPU). A shorter call runs the same program with the steps
    past its end skipped.
    """
    calls = []
    for start in range(step, step + count, self._steps_per_call):
      length = min(self._steps_per_call, step + count - start)
      if self._steps_per_call == 1:
        arguments = (self._global(self._indices(start)),)
      else:
        # The columns of skipped steps are filler: a skipped step reads no batch.
        columns = [self._indices(s) for s in range(start, start + length)]
        columns += columns[:1] * (self._steps_per_call - length)
        arguments = (self._global(np.stack(columns, axis=1)), length)  # [B, K]
      state, metrics = self._step(state, *self._split, *arguments)
      calls.append((metrics, length))
    return state, calls

  def _global(self, index: np.ndarray):
    return distributed.to_global({'index': index}, self._sharding)['index']

  def close(self) -> None:
    pass


def _put_split_on_device(split: data.Split, normalizer: data.Normalizer | None, sharding):
  """Returns the training split as device arrays (images, labels), normalised unless
  `normalizer` is None, if it fits.

  Raises:
    UserError: the device reports its memory and the split would take more than half of it.
  """
  images = split.images if normalizer is None else normalizer(split.images)
  stats = jax.local_devices()[0].memory_stats() or {}
  limit = stats.get('bytes_limit')
  if limit and images.nbytes > limit / 2:
    raise UserError(f'config.data.on_device=True: the training split takes '
                    f'{images.nbytes / 2**30:.1f} GiB, more than half of the device\'s '
                    f'{limit / 2**30:.1f} GiB; leave on_device off for this dataset.')
  return distributed.replicate(images, sharding), distributed.replicate(split.labels, sharding)
