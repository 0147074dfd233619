"""`train_and_evaluate(config, workdir)`: the training loop, top to bottom in data-flow order.

This is the one place besides the command-line tools that reads the config; everything it calls
takes plain arguments. Copy it and change it: there are no callbacks or hooks to learn.
"""

import dataclasses
import itertools
import math
import os
import time
from typing import Callable, Iterable, Iterator

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec
from tqdm import tqdm

from cnn_jax import (checkpoint, cpu_kernels, data, distributed, models, optim, signals, steps,
                     summary)
from cnn_jax.augment import Augmentation
from cnn_jax.config_validation import model_kwargs, validate_config
from cnn_jax.errors import UserError
from cnn_jax.metric_writers import MetricWriter
from cnn_jax.workdir import (config_differences, load_config, save_dataset_record,
                             save_run_record)

DTYPES = {'float32': jnp.float32, 'bfloat16': jnp.bfloat16}


def log(*args, **kwargs) -> None:
  """print(), in process 0 only: a multi-host run speaks once."""
  if distributed.is_main_process():
    print(*args, **{'flush': True, **kwargs})


def train_batches(dataset, config: ml_collections.ConfigDict, seed: int, start_step: int,
                  sharding: NamedSharding) -> Iterator[dict]:
  """Yields global training batches start_step, start_step + 1, ... without end.

  From a split in memory, every process builds the same batch and keeps its rows; from a stream,
  each process reads, decodes and shuffles only its own shard of the examples.
  """
  if isinstance(dataset, data.StreamedDataset):
    d = config.data
    stream = data.stream.train_batches(
        dataset.train, dataset.prepare, dataset.normalizer, config.batch_size, seed, start_step,
        (jax.process_index(), jax.process_count()), d.workers, d.worker_processes, d.prefetch)
    try:
      for batch in stream:
        yield distributed.from_local(batch, sharding)
    finally:
      stream.close()  # Stops its worker processes however the loop ends.
  else:
    for step in itertools.count(start_step):
      yield distributed.to_global(data.train_batch(dataset.train, dataset.normalizer,
                                                   config.batch_size, seed, step), sharding)


def eval_batches(dataset, batch_size: int, sharding: NamedSharding,
                 threads: int = 0) -> Iterator[dict]:
  """Yields global eval batches covering every held-out example once, the last padded and masked."""
  if isinstance(dataset, data.StreamedDataset):
    for batch in data.stream.eval_batches(dataset.eval, dataset.prepare, dataset.normalizer,
                                          batch_size, (jax.process_index(), jax.process_count()),
                                          threads):
      yield distributed.from_local(batch, sharding)
  else:
    for batch in data.eval_batches(dataset.eval, dataset.normalizer, batch_size):
      yield distributed.to_global(batch, sharding)


def eval_sums(eval_step, state: steps.TrainState, batches: Iterable[dict]) -> dict[str, np.ndarray]:
  """Returns `eval_step`'s sums {'loss_sum', 'correct', 'count'} over all `batches`."""
  totals = None
  for batch in batches:
    sums = eval_step(state, batch)
    totals = sums if totals is None else jax.tree.map(jnp.add, totals, sums)
  return jax.device_get(totals)


def evaluate(eval_step, state: steps.TrainState, batches: Iterable[dict]) -> dict[str, float]:
  """Returns {'loss', 'accuracy', 'count'} over all `batches` (their real examples, once each)."""
  totals = eval_sums(eval_step, state, batches)
  count = float(totals['count'])
  return {'loss': float(totals['loss_sum']) / count, 'accuracy': float(totals['correct']) / count,
          'count': count}


def data_spec(config: ml_collections.ConfigDict) -> data.DataSpec:
  """Returns the data layer's explicit description of config.data."""
  fields = {f.name for f in dataclasses.fields(data.DataSpec)}
  return data.DataSpec(**{k: v for k, v in config.data.items() if k in fields})


def report_skipped(dataset, workdir: str) -> None:
  """Prints how many unreadable files were left out and lists them all in the workdir."""
  if not distributed.is_main_process():
    return
  skipped = [(split, f, reason) for split, part in (('train', dataset.train),
                                                     ('eval', dataset.eval))
             for f, reason in getattr(part, 'skipped', ())]  # A TFDS source has none.
  if not skipped:
    return
  path = os.path.join(workdir, 'skipped_files.txt')
  os.makedirs(workdir, exist_ok=True)
  with open(path, 'w', encoding='utf-8') as f:
    f.writelines(f'{split}\t{name}\t{reason}\n' for split, name, reason in skipped)
  shown = '; '.join(f'{name} ({reason})' for _, name, reason in skipped[:3])
  print(f'Skipped {len(skipped):,} unreadable file(s), e.g. {shown}. All are listed in {path}.',
        flush=True)


def put_split_on_device(split: data.Split, normalizer: data.Normalizer, sharding):
  """Returns the normalised training split as device arrays (images, labels), if it fits.

  Raises:
    UserError: the device reports its memory and the split would take more than half of it.
  """
  images = normalizer(split.images)
  stats = jax.local_devices()[0].memory_stats() or {}
  limit = stats.get('bytes_limit')
  if limit and images.nbytes > limit / 2:
    raise UserError(f'config.data.on_device=True: the training split takes '
                    f'{images.nbytes / 2**30:.1f} GiB, more than half of the device\'s '
                    f'{limit / 2**30:.1f} GiB; leave on_device off for this dataset.')
  return distributed.replicate(images, sharding), distributed.replicate(split.labels, sharding)


def build_model(config: ml_collections.ConfigDict, num_classes: int):
  """Returns the Flax module named by config.model, for `num_classes` outputs."""
  kwargs = model_kwargs(config.model)
  if 'pool_first' in models.model_fields(config.model.name):
    kwargs['pool_first'] = config.get('pool_first', True)  # Absent from older runs' config.json.
  return models.create_model(config.model.name, num_classes, dtype=DTYPES[config.dtype], **kwargs)


def _accumulate(sums: dict[str, float], pending: list) -> None:
  """Adds per-step train metrics into running sums, in step order, in float64.

  The same additions in the same order happen whether or not the run was resumed in between
  (the sums travel in the checkpoint), so logged averages are bitwise identical either way.
  """
  for metrics in jax.device_get(pending):  # A scanned dispatch gives [K] metrics for K steps.
    for loss, accuracy in zip(np.atleast_1d(metrics['loss']), np.atleast_1d(metrics['accuracy'])):
      sums['loss'] += float(loss)
      sums['accuracy'] += float(accuracy)
      sums['count'] += 1
  pending.clear()


def steps_per_dispatch(config: ml_collections.ConfigDict, per_epoch: int) -> int:
  """Training steps run by one compiled call: config.steps_per_dispatch, or for 0 (auto) a whole
  epoch on a GPU or TPU with the data on the device, and 1 otherwise.

  On a CPU, XLA runs convolutions inside a loop several times slower than the same step called
  from Python (see experiments/benchmarks/RESULTS.md), so auto never scans there.
  """
  if config.steps_per_dispatch:
    return config.steps_per_dispatch
  on_accelerator = jax.devices()[0].platform != 'cpu'
  return per_epoch if config.data.on_device and on_accelerator else 1


def _next_stop(done: int, num_steps: int, every: tuple[int, ...]) -> int:
  """The first step after `done` where the loop must regain control: the end, or a multiple of
  any period in `every` (logging, evaluation, saving)."""
  return min([num_steps] + [(done // period + 1) * period for period in every if period])


def _resume(manager, state: steps.TrainState, workdir: str,
            config: ml_collections.ConfigDict) -> tuple[steps.TrainState, dict]:
  """Restores the latest checkpoint onto `state`'s structure, or refuses with the config diff."""
  step = manager.latest_step()
  saved = load_config(workdir)
  changes = config_differences(saved, config) if saved is not None else []
  try:
    state, progress = checkpoint.restore(manager, step, state)
  except checkpoint.IncompatibleCheckpoint as e:
    raise UserError(
        f'{workdir} holds a checkpoint (step {step:,}) of a different model, optimizer or dataset, '
        'so this config cannot resume it. Changed settings:\n  '
        + '\n  '.join(changes or ['(none recorded)'])
        + f'\nThe saved state differs: {e}.\nUse a new --workdir, or keep these settings.') from None
  log(f'Resuming from the checkpoint at step {step:,}'
        + (' with changed settings: ' + '; '.join(changes) if changes else '') + '.', flush=True)
  return state, progress


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str,
                       on_eval: Callable[[int, dict[str, float]], None] | None = None
                       ) -> dict[str, float]:
  """Trains the model described by `config`, or resumes the run in `workdir` if it has one.

  Writes metrics, checkpoints and the run record into `workdir`. `on_eval(step, eval_metrics)`,
  if given, is called after each evaluation; an exception it raises ends training there (a
  sweep uses this to prune an unpromising trial).

  Returns:
    The final evaluation metrics: {'loss', 'accuracy', 'count'} on config.data.eval_split.

  Raises:
    UserError: a mistake in the config or data, or a workdir this config cannot resume.
    signals.TrainingInterrupted: SIGTERM or Ctrl-C; a checkpoint was saved first.
  """
  if config.population.size > 1:  # N models at once: a loop of its own (cnn_jax/population.py).
    from cnn_jax import population  # pylint: disable=g-import-not-at-top
    return population.train_population(config, workdir)
  # ---- check everything before any work ----------------------------------------------------------
  mesh = Mesh(np.asarray(jax.devices()), ('data',))  # One data axis; one device is a mesh of one.
  validate_config(config, num_devices=mesh.size)
  spec = data_spec(config)
  info = data.describe_dataset(spec)
  model = build_model(config, info.num_classes)
  models.check_fits(model, info.image_shape)
  rows = summary.summarize(model, info.image_shape)

  # ---- data ----------------------------------------------------------------------------------------
  started = time.time()
  load = data.stream_dataset if config.data.stream else data.load_dataset
  dataset = load(spec, config.data.train_split, config.data.eval_split)
  report_skipped(dataset, workdir)
  per_epoch = data.steps_per_epoch(len(dataset.train), config.batch_size)
  num_steps = config.num_steps or math.ceil(config.num_epochs * per_epoch)
  eval_every = config.eval_every_steps or per_epoch
  log(f'{info.name}: {len(dataset.train):,} training and {len(dataset.eval):,} eval images of '
      f'{info.image_shape}, {info.num_classes} classes; {num_steps:,} steps of '
      f'{config.batch_size} ({num_steps / per_epoch:.1f} epochs) on {mesh.size} '
      f'{jax.devices()[0].platform.upper()} device(s)'
      + (f' in {jax.process_count()} processes' if jax.process_count() > 1 else '') + '.')
  log(summary.format_summary(rows))

  # ---- model, optimizer, state: fresh, warm-started or resumed -------------------------------------
  opt = config.optimizer
  schedule = optim.create_schedule(opt.schedule, opt.learning_rate, num_steps, opt.warmup_steps)
  tx = optim.create_optimizer(opt.name, schedule, opt.momentum, opt.nesterov, opt.weight_decay,
                              opt.grad_clip_norm)
  replicated = NamedSharding(mesh, PartitionSpec())
  batch_sharding = NamedSharding(mesh, PartitionSpec('data'))
  # Created inside jit with a replicated output: every process then holds the same global state.
  state = jax.jit(lambda: steps.create_train_state(model, tx, jax.random.key(config.seed),
                                                   info.image_shape), out_shardings=replicated)()
  ckpt = config.checkpoint
  manager = checkpoint.open_manager(workdir, ckpt.keep_last, ckpt.keep_best, ckpt.best_metric)
  batches = None
  try:  # `finally` closes the manager and the batches (a stream's workers), however the run ends.
    progress = {}
    if manager.latest_step() is not None:
      state, progress = _resume(manager, state, workdir, config)
    elif config.init_from:
      state = checkpoint.warm_start(state, config.init_from, config.init_layers)
    if distributed.is_main_process():
      save_run_record(workdir, config)
      save_dataset_record(workdir, dataset.info, dataset.normalizer)
    options = cpu_kernels.compiler_options(config.cpu_kernels)
    step_fn = steps.train_step_fn(model, tx, config.label_smoothing,
                                  Augmentation(**config.augment))
    train_step = jax.jit(step_fn, donate_argnums=0, compiler_options=options)
    if config.data.on_device:  # Batches gathered on the device: only indices leave the host.
      device_split = put_split_on_device(dataset.train, dataset.normalizer, replicated)
      gather_step = steps.make_gather_train_step(step_fn, options)
      scan_step = steps.make_scan_train_step(step_fn, options)
    per_dispatch = steps_per_dispatch(config, per_epoch)
    stops = (config.log_every_steps, eval_every, ckpt.every_steps)
    eval_step = steps.make_eval_step(model)

    # ---- loop --------------------------------------------------------------------------------------
    start_step = int(jax.device_get(state.step))
    shuffle_seed = config.seed if config.shuffle_seed is None else config.shuffle_seed
    writer = MetricWriter(workdir, resume_step=start_step, elapsed=progress.get('elapsed', 0.0),
                          enabled=distributed.is_main_process())
    sums = progress.get('train_sums', {'loss': 0.0, 'accuracy': 0.0, 'count': 0})
    pending = []  # Train metrics stay on the device until they are logged or checkpointed.
    eval_metrics, last_save = {}, time.time()
    batches = train_batches(dataset, config, shuffle_seed, start_step, batch_sharding)
    bar = tqdm(initial=start_step, total=num_steps, unit='step', dynamic_ncols=True,
               disable=None if config.progress_bar and distributed.is_main_process() else True)
    with signals.StopRequest() as stop:
      done = start_step
      while done < num_steps:
        step = done
        count = min(per_dispatch, _next_stop(step, num_steps, stops) - step)
        if count > 1:  # One call runs `count` steps, gathering their batches on the device.
          index = np.stack([data.train_indices(len(dataset.train), config.batch_size,
                                               shuffle_seed, s)
                            for s in range(step, step + count)], axis=1)  # [B, count]
          index = distributed.to_global({'index': index}, batch_sharding)['index']
          state, metrics = scan_step(state, *device_split, index)
        elif config.data.on_device:
          index = data.train_indices(len(dataset.train), config.batch_size, shuffle_seed, step)
          index = distributed.to_global({'index': index}, batch_sharding)['index']
          state, metrics = gather_step(state, *device_split, index)
        else:
          state, metrics = train_step(state, next(batches))
        pending.append(metrics)
        done = step + count
        step = done - 1  # The last step run, for the learning rate logged below.
        bar.update(count)
        if done % config.log_every_steps == 0 or done == num_steps:
          _accumulate(sums, pending)
          train_metrics = {'loss': sums['loss'] / sums['count'],
                           'accuracy': sums['accuracy'] / sums['count'],
                           'learning_rate': float(schedule(step))}
          sums = {'loss': 0.0, 'accuracy': 0.0, 'count': 0}
          writer.write(done, 'train', train_metrics)
          bar.set_postfix(loss=f"{train_metrics['loss']:.4f}",
                          acc=f"{train_metrics['accuracy']:.3f}")
        evaluated = done % eval_every == 0 or done == num_steps
        if evaluated:
          eval_metrics = evaluate(eval_step, state, eval_batches(
              dataset, config.eval_batch_size, batch_sharding, config.data.workers))
          writer.write(done, 'eval', eval_metrics)
          if on_eval is not None:
            on_eval(done, eval_metrics)
          if distributed.is_main_process():
            bar.write(f'step {done:>6,}/{num_steps:,}  epoch {done / per_epoch:6.2f}  '
                      f'{config.data.eval_split} loss {eval_metrics["loss"]:.4f}  accuracy '
                      f'{eval_metrics["accuracy"]:.2%}  ({time.time() - started:.1f} s)')
        if (done == num_steps or stop.requested
            or (evaluated if not ckpt.every_steps else done % ckpt.every_steps == 0)
            or (ckpt.every_minutes and time.time() - last_save > 60 * ckpt.every_minutes)):
          _accumulate(sums, pending)  # The running sums travel in the checkpoint.
          checkpoint.save(manager, state, {'train_sums': sums, 'elapsed': writer.elapsed()},
                          eval_metrics if evaluated else None)
          last_save = time.time()
        if stop.requested:
          break
    bar.close()
    writer.close()
    manager.wait_until_finished()  # The last save is asynchronous: complete it first.
    if stop.requested:
      raise signals.TrainingInterrupted(stop.signum, done)
    if not eval_metrics:  # Re-running a finished run: nothing to train, report its result.
      eval_metrics = evaluate(eval_step, state, eval_batches(
          dataset, config.eval_batch_size, batch_sharding, config.data.workers))
  finally:
    if batches is not None:
      batches.close()
    manager.close()

  log(f'Final {config.data.eval_split} accuracy: {eval_metrics["accuracy"]:.2%} '
      f'({int(round(eval_metrics["accuracy"] * eval_metrics["count"]))}/'
      f'{int(eval_metrics["count"])}) after {num_steps:,} steps in '
      f'{time.time() - started:.1f} s.')
  return eval_metrics
