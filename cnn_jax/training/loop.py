"""The training loop: one body for a single model and for a population of N models.

A population differs from a single model only in its step functions (the single model's, vmapped
over members) and in having N of what the loop writes: metrics files, checkpoints, evaluations.
Everything else (batches, the step runner, logging the learning rate, evaluation, timed and
signalled checkpoints, resume, the progress bar) is written once, here, for both.
"""

import collections
import dataclasses
import itertools
import os
import signal
import time
from typing import Any, Callable, Iterable, Iterator

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.sharding import NamedSharding
from tqdm import tqdm

from cnn_jax import data
from cnn_jax.errors import UserError
from cnn_jax.runtime import distributed, signals
from cnn_jax.runtime.writers import MetricWriter
from cnn_jax.training import checkpoint, steps
from cnn_jax.training.setup import Plan
from cnn_jax.training.workdir import config_differences, load_run_config, resumable

_SUMS = ('loss', 'accuracy', 'count')  # The running train metrics, summed between logs.


@dataclasses.dataclass(frozen=True)
class Trainee:
  """What the loop trains: one model, or N stacked models (a population).

  Attributes:
    init: returns the fresh train state; with a leading member axis [N] when `stacked`.
    steps: its train and eval steps; when `stacked`, they take the stacked states and give
      metrics and sums [N].
    configs: each member's own complete config (for a single model, the run's config).
    workdirs: where each member's metrics, checkpoints and records go.
    schedules: each member's learning rate as a function of the step, for the logs.
    stacked: whether the state carries a member axis.
  """
  init: Callable[[], steps.TrainState]
  steps: steps.Steps
  configs: tuple[ml_collections.ConfigDict, ...]
  workdirs: tuple[str, ...]
  schedules: tuple[Callable, ...]
  stacked: bool = False

  def split(self, state) -> list:
    """The members' own states."""
    if not self.stacked:
      return [state]
    return [jax.tree.map(lambda x, i=i: x[i], state) for i in range(len(self.workdirs))]

  def join(self, states: list):
    """The state the step functions take, from the members' own states."""
    return jax.tree.map(lambda *xs: jnp.stack(xs), *states) if self.stacked else states[0]


def step_of(trainee: Trainee, state) -> int:
  """The number of steps `state` has trained (every member has trained as many)."""
  done = jax.device_get(state.step)  # [] for one model, [N] for a population.
  return int(done[0] if trainee.stacked else done)


# ---- batches on the devices --------------------------------------------------------------------

def pixel_table(dataset) -> np.ndarray | None:
  """The table that normalises training images on the device (`steps.normalize_on_device`)
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
  `raw_pixels`, its images stay as the split holds them (uint8, for `steps.normalize_on_device`).
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


def evaluate(eval_step, state, batches: Iterable[dict]) -> list[dict[str, float]]:
  """Returns each member's {'loss', 'accuracy', 'count'} over all `batches` (every real example
  once); a single model is a list of one."""
  totals = None
  for batch in batches:
    sums = eval_step(state, batch)
    totals = sums if totals is None else jax.tree.map(jnp.add, totals, sums)
  totals = {k: np.atleast_1d(v) for k, v in jax.device_get(totals).items()}
  return [{'loss': float(loss) / float(count), 'accuracy': float(correct) / float(count),
           'count': float(count)}
          for loss, correct, count in zip(totals['loss_sum'], totals['correct'], totals['count'])]


# ---- the step runner, chosen once ----------------------------------------------------------------

class HostBatches:
  """Runs one step per call on the next batch from the host (or from a stream); with a `table`
  (`pixel_table`), the batches' images are uint8 and the step normalises them."""

  def __init__(self, model_steps: steps.Steps, batches: Iterator[dict],
               table: np.ndarray | None = None):
    train_step = model_steps.train
    if table is not None:
      train_step = steps.normalize_on_device(train_step, table)
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
      train_step = steps.normalize_on_device(train_step, table)
    self._split = _put_split_on_device(dataset.train,
                                       None if table is not None else dataset.normalizer,
                                       replicated)
    self._steps_per_call = steps_per_call
    wrap = steps.gather_step if steps_per_call == 1 else steps.scan_steps
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


# ---- resume ------------------------------------------------------------------------------------

def restore(trainee: Trainee, managers: list, state) -> tuple[Any, list[dict]]:
  """Restores every member at the newest step all of them saved (dropping any newer member
  checkpoint), or returns `state` as it is if none saved; returns (state, each one's progress).

  Raises:
    UserError: a checkpoint of another model, optimizer or dataset, or members without a
      common step.
  """
  if all(m.latest_step() is None for m in managers):
    return state, [{}] * len(managers)
  common = set.intersection(*(set(m.all_steps()) for m in managers))
  if not common:
    raise UserError(f'The members\' checkpoints in {os.path.dirname(trainee.workdirs[0])} have '
                    'no step in common; use a new --workdir.')
  step = max(common)
  states, progress = [], []
  for manager, template, workdir, config in zip(managers, trainee.split(state),
                                                trainee.workdirs, trainee.configs):
    for newer in [s for s in manager.all_steps() if s > step]:
      manager.delete(newer)  # Saved after a member that did not get there: redo those steps.
    restored, member_progress = _restore_member(manager, step, template, workdir, config)
    states.append(restored)
    progress.append(member_progress)
  return trainee.join(states), progress


def _restore_member(manager, step: int, template, workdir: str, config):
  """Restores checkpoint `step` onto `template`'s structure, or refuses with the config diff."""
  saved = load_run_config(workdir)
  changes = config_differences(saved, config) if saved is not None else {}
  try:
    state, progress = checkpoint.restore(manager, step, template)
  except checkpoint.IncompatibleCheckpoint as e:
    raise UserError(
        f'{workdir} holds a checkpoint (step {step:,}) of a different model, optimizer or dataset, '
        'so this config cannot resume it. Changed settings:\n  '
        + '\n  '.join(changes.values() or ['(none recorded)'])
        + f'\nThe saved state differs: {e}.\nUse a new --workdir, or keep these settings.'
    ) from None
  fixed = [line for key, line in changes.items() if not resumable(key)]
  if fixed:
    raise UserError(
        f'{workdir} was trained to step {step:,} with other settings, which a resumed run cannot '
        'change (its config.json would no longer say how the model was trained):\n  '
        + '\n  '.join(fixed) + f'\nKeep them to resume, or start a new --workdir (add '
        f'--config.init_from={workdir} to begin from its weights). A run may change on resume '
        'only its length, its logging, evaluation and checkpoint cadence, and where and how it '
        'reads the data.')
  distributed.log(f'Resuming from the checkpoint at step {step:,}'
      + (' with changed settings: ' + '; '.join(changes.values()) if changes else '') + '.')
  return state, progress


# ---- the loop ----------------------------------------------------------------------------------

def _accumulate(sums: np.ndarray, pending: list) -> None:
  """Adds the pending per-step train metrics into the running sums [N, 3], in step order, in
  float64. The same additions in the same order happen whether or not the run was resumed in
  between (the sums travel in the checkpoints), so logged averages are bitwise identical."""
  # (metrics, steps) pairs: [] or [N] (members) for one step, [K] or [K, N] for a scan of K
  # whose first `steps` ran.
  for metrics, count in jax.device_get(pending):
    loss, accuracy = (np.reshape(metrics[k], (-1, len(sums)))[:count]
                      for k in ('loss', 'accuracy'))
    for step_loss, step_accuracy in zip(loss, accuracy):
      sums[:, 0] += step_loss
      sums[:, 1] += step_accuracy
      sums[:, 2] += 1
  pending.clear()


def _metrics_line(done: int, plan: Plan, split: str, finals: list[dict], seconds: float) -> str:
  """One line of a split's metrics at step `done`: one model's loss and accuracy, or how the
  members' accuracies spread."""
  if len(finals) == 1:
    return (f'step {done:>6,}/{plan.num_steps:,}  epoch {done / plan.steps_per_epoch:6.2f}  '
            f'{split} loss {finals[0]["loss"]:.4f}  accuracy {finals[0]["accuracy"]:.2%}  '
            f'({seconds:.1f} s)')
  accuracies = [f['accuracy'] for f in finals]
  return (f'step {done:>6,}/{plan.num_steps:,}  {split} accuracy: best {max(accuracies):.2%} '
          f'(member {int(np.argmax(accuracies))}), median {np.median(accuracies):.2%}, worst '
          f'{min(accuracies):.2%}  ({seconds:.1f} s)')


def fit(trainee: Trainee, state, runner, evaluate_all: Callable[[Any], list[dict]], plan: Plan,
        managers: list, progress: list[dict], eval_split: str, started: float,
        progress_bar: bool = True, on_eval: Callable | None = None,
        evaluate_test: Callable[[Any], list[dict]] | None = None
        ) -> tuple[list[dict], list[dict] | None]:
  """Trains `state` from its step to plan.num_steps; returns (each member's last eval metrics,
  each one's test metrics or None).

  Logs, evaluates and checkpoints when `plan` says so, and checkpoints on a timer and on SIGTERM
  or Ctrl-C. `on_eval(step, metrics)` runs after each evaluation (a sweep prunes by raising).
  At the end, `evaluate_test` (if given) scores each member's checkpoint chosen on the eval split,
  once; the metrics files record it as split 'test'.

  Raises:
    signals.TrainingInterrupted: a stop signal arrived; every member was checkpointed first.
  """
  size = len(trainee.workdirs)
  done = start_step = step_of(trainee, state)
  main = distributed.is_main_process()
  writers = [MetricWriter(w, resume_step=start_step, elapsed=p.get('elapsed', 0.0), enabled=main)
             for w, p in zip(trainee.workdirs, progress)]
  sums = np.asarray([[p.get('train_sums', {}).get(k, 0.0) for k in _SUMS] for p in progress],
                    np.float64)  # [N, 3]
  pending, finals, last_save = [], [{}] * size, time.time()
  # Processes of a multi-host run each see their own signals and clocks, while a save and every
  # step are collective: they agree at each log whether to stop or save (one tiny all-gather).
  agree = jax.process_count() > 1
  stopping = False
  # Every member's learning rate in one compiled call: evaluated op by op, a schedule compiles a
  # dozen tiny programs on its first log (0.5 s of a cold digits run on a 2-core CPU).
  learning_rates = jax.jit(lambda step: jnp.stack([jnp.asarray(schedule(step), jnp.float32)
                                                   for schedule in trainee.schedules]))
  bar = tqdm(initial=start_step, total=plan.num_steps, unit='step', dynamic_ncols=True,
             disable=None if progress_bar and main else True)
  # Without a terminal (a file, a pipe, CI, SLURM) tqdm hides the bar: print each train log as a
  # plain line instead, so the loss reaches the log.
  plain = progress_bar and main and bar.disable
  with signals.StopRequest() as stop:
    while done < plan.num_steps:
      count = min(plan.steps_per_dispatch, plan.next_stop(done) - done)
      state, metrics = runner(state, done, count)
      pending.extend(metrics)  # Train metrics stay on the device until logged or saved.
      done += count
      bar.update(count)
      due = plan.due(done)
      if due['log']:
        _accumulate(sums, pending)
        rates = np.asarray(learning_rates(done - 1))
        for writer, member_sums, rate in zip(writers, sums, rates):
          writer.write(done, 'train', {'loss': member_sums[0] / member_sums[2],
                                       'accuracy': member_sums[1] / member_sums[2],
                                       'learning_rate': float(rate)})
        bar.set_postfix(loss=f'{sums[0, 0] / sums[0, 2]:.4f}', acc=f'{sums[0, 1] / sums[0, 2]:.3f}')
        if plain:
          train = [{'loss': m[0] / m[2], 'accuracy': m[1] / m[2]} for m in sums]
          print(_metrics_line(done, plan, 'train', train, time.time() - started), flush=True)
        sums[:] = 0
      if due['eval']:
        finals = evaluate_all(state)
        for writer, member_metrics in zip(writers, finals):
          writer.write(done, 'eval', member_metrics)
        if on_eval is not None:
          on_eval(done, finals)
        if main:
          bar.write(_metrics_line(done, plan, eval_split, finals, time.time() - started))
      timed = bool(plan.save_every_minutes
                   and time.time() - last_save > 60 * plan.save_every_minutes)
      stopping = stop.requested
      if agree:
        stopping, timed = distributed.any_process([stopping, timed]) if due['log'] else (False,
                                                                                         False)
      if due['save'] or stopping or timed:
        _accumulate(sums, pending)  # The running sums travel in the checkpoints.
        for manager, writer, member, member_sums, metrics in zip(
            managers, writers, trainee.split(state), sums, finals):
          checkpoint.save(manager, member, {'train_sums': dict(zip(_SUMS, member_sums.tolist())),
                                            'elapsed': writer.elapsed()},
                          metrics if due['eval'] else None)
        last_save = time.time()
      if stopping:
        break
  bar.close()
  for manager in managers:
    manager.wait_until_finished()  # The last save is asynchronous: complete it first.
  if stopping:
    for writer in writers:
      writer.close()
    # A process that was not signalled itself stops as its signalled peers do.
    raise signals.TrainingInterrupted(stop.signum or signal.SIGTERM, done)
  finals = finals if finals[0] else evaluate_all(state)  # A finished run re-run: its result.
  tests = None
  if evaluate_test is not None:
    chosen, chosen_steps = chosen_checkpoints(trainee, managers, state)
    tests = [{**metrics, 'checkpoint_step': step}
             for metrics, step in zip(evaluate_test(chosen), chosen_steps)]
    for writer, metrics in zip(writers, tests):
      writer.write(done, 'test', metrics)
  for writer in writers:
    writer.close()
  return finals, tests


def chosen_checkpoints(trainee: Trainee, managers: list, state) -> tuple[Any, list[int]]:
  """Each member's checkpoint chosen on the eval split (its best by checkpoint.best_metric; its
  latest where none was ranked), restored onto `state`'s structure, and their steps."""
  states, chosen_steps = [], []
  last = step_of(trainee, state)
  for manager, member in zip(managers, trainee.split(state)):
    step = manager.best_step()
    if step is None or step == last:  # The state in hand is the chosen one.
      step = last
    else:
      member, _ = checkpoint.restore(manager, step, member)
    states.append(member)
    chosen_steps.append(step)
  return trainee.join(states), chosen_steps
