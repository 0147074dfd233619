"""Population training: N models that differ in seed and numeric hyperparameters, in one program.

    python -m cnn_jax.main --config configs/digits.py --workdir runs/lr_population \\
        --config.population.size=4 \\
        --config.population.learning_rates='(3e-4, 1e-3, 3e-3, 1e-2)'

`jax.vmap` turns the train step of one model into the train step of N stacked models; every
member sees the same batches (the order of `shuffle_seed`, else `seed`) and has its own seed,
learning rate, weight decay, label smoothing and dropout rates, which enter the compiled step as
arrays. One dispatch then trains all N, which on a CPU amortises the per-step overhead and on an
accelerator fills the device. Batches come from the host (`data.on_device` is for single runs).

Each member is written as an ordinary run in WORKDIR/member_XX: its own config.json (the values
it trained with, so training it alone reproduces it), dataset.json, metrics.jsonl, TensorBoard
events and checkpoints. `cnn_jax.evaluate`, `cnn_jax.predict` and `cnn_jax.report` take a member's
directory as they take any workdir. WORKDIR/population.json ranks the members. Re-running the
same command resumes every member from its checkpoints.
"""

import copy
import json
import math
import os
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec
from tqdm import tqdm

from cnn_jax import checkpoint, cpu_kernels, data, distributed, models, optim, signals, steps
from cnn_jax.augment import Augmentation
from cnn_jax.config_validation import model_kwargs, validate_config
from cnn_jax.errors import UserError
from cnn_jax.metric_writers import MetricWriter
from cnn_jax.workdir import save_dataset_record, save_run_record

# config.population list → the config key it sets in each member.
VARIED = {
    'seeds': 'seed',
    'learning_rates': 'optimizer.learning_rate',
    'weight_decays': 'optimizer.weight_decay',
    'label_smoothings': 'label_smoothing',
    'dense_dropouts': 'model.dense_dropout',
    'conv_dropouts': 'model.conv_dropout',
}
SUMMARY_FILE = 'population.json'


def member_dir(workdir: str, index: int) -> str:
  """Returns the directory of member `index` of the population in `workdir`."""
  return os.path.join(workdir, f'member_{index:02d}')


def _get(config: ml_collections.ConfigDict, dotted_key: str):
  node = config
  for part in dotted_key.split('.'):
    node = node[part]
  return node


def _set(config: ml_collections.ConfigDict, dotted_key: str, value) -> None:
  *parents, leaf = dotted_key.split('.')
  node = config
  for part in parents:
    node = node[part]
  with node.unlocked():
    node[leaf] = value


def member_configs(config: ml_collections.ConfigDict) -> list[ml_collections.ConfigDict]:
  """Returns one complete single-model config per member, each checked like any config.

  Raises:
    UserError: a list whose length is not population.size, a value a member's config refuses, or
      a dropout list for a model without that setting.
  """
  pop = config.population
  size = pop.size
  problems = [f'config.population.{field} has {len(pop[field])} values but population.size is '
              f'{size}; give one per member, or () for the same value in all'
              for field in VARIED if pop[field] and len(pop[field]) != size]
  model_fields = models.model_fields(config.model.name) if config.model.name in models.MODELS else ()
  for field in ('dense_dropouts', 'conv_dropouts'):
    key = VARIED[field].split('.')[1]
    if pop[field] and key not in model_fields:
      problems.append(f'config.population.{field}: model {config.model.name!r} has no {key}')
  if config.data.on_device:
    problems.append('config.data.on_device: a population reads its batches from the host; '
                    'leave data.on_device off')
  if config.data.stream:
    problems.append('config.data.stream: a population trains on a split held in memory; '
                    'leave data.stream off')
  if problems:
    raise UserError('The population config has problems:\n  - ' + '\n  - '.join(problems))
  members = []
  for i in range(size):
    member = copy.deepcopy(config)
    _set(member, 'population.size', 0)
    for field in VARIED:
      _set(member, f'population.{field}', ())
    # Every member reads the population's batch order, so alone it needs the same shuffle seed.
    _set(member, 'shuffle_seed', config.seed if config.shuffle_seed is None else config.shuffle_seed)
    _set(member, 'seed', config.seed + i)
    for field, key in VARIED.items():
      if pop[field]:
        _set(member, key, pop[field][i])
    try:
      validate_config(member)
      # Constructing the model checks its field values (a dropout rate in [0, 1), say).
      models.create_model(member.model.name, 2, **model_kwargs(member.model))
    except UserError as e:
      raise UserError(f'Population member {i}: {e}') from None
    members.append(member)
  return members


def varied_values(config: ml_collections.ConfigDict,
                  members: list[ml_collections.ConfigDict]) -> dict[str, np.ndarray]:
  """Returns {config key: [N] values} for the hyperparameters that enter the step as arrays."""
  return {key: np.asarray([float(_get(m, key)) for m in members], np.float32)
          for field, key in VARIED.items() if field != 'seeds' and config.population[field]}


class Population:
  """The population's model and optimizer for traced hyperparameters (one member's values)."""

  def __init__(self, config: ml_collections.ConfigDict, model, num_steps: int):
    self.config, self.model, self.num_steps = config, model, num_steps

  def _get(self, values: dict, key: str):
    """A member's value: a traced scalar if the population varies `key`, else the config's."""
    return values[key] if key in values else _get(self.config, key)

  def member_model(self, values: dict):
    fields = {k.split('.')[1]: v for k, v in values.items() if k.startswith('model.')}
    return self.model.clone(**fields) if fields else self.model

  def member_optimizer(self, values: dict):
    opt = self.config.optimizer
    schedule = optim.create_schedule(opt.schedule, self._get(values, 'optimizer.learning_rate'),
                                     self.num_steps, opt.warmup_steps)
    return optim.create_optimizer(opt.name, schedule, opt.momentum, opt.nesterov,
                                  self._get(values, 'optimizer.weight_decay'), opt.grad_clip_norm)

  def init(self, seed, values: dict, image_shape) -> steps.TrainState:
    """One member's fresh state; `vmap` it over seeds and values."""
    return steps.create_train_state(self.member_model(values), self.member_optimizer(values),
                                    jax.random.key(seed), image_shape)

  def train_step(self, state: steps.TrainState, values: dict, batch: steps.Batch):
    """One member's train step; `vmap` it over states and values, sharing the batch."""
    step = steps.train_step_fn(self.member_model(values), self.member_optimizer(values),
                               self._get(values, 'label_smoothing'),
                               Augmentation(**self.config.augment))
    return step(state, batch)


def _member(tree, i: int):
  return jax.tree.map(lambda x: x[i], tree)


def _restore_members(managers, states, member_cfgs, workdirs):
  """Restores every member at the newest step all of them have; returns (states, progress)."""
  from cnn_jax.train import _resume  # pylint: disable=g-import-not-at-top
  common = set.intersection(*(set(m.all_steps()) for m in managers))
  if not common:
    raise UserError(f'The members\' checkpoints in {os.path.dirname(workdirs[0])} have no step '
                    'in common; use a new --workdir.')
  step = max(common)
  restored, progress = [], []
  for i, manager in enumerate(managers):
    for newer in [s for s in manager.all_steps() if s > step]:
      manager.delete(newer)  # Saved after a member that did not get there: redo those steps.
    state, member_progress = _resume(manager, _member(states, i), workdirs[i], member_cfgs[i])
    restored.append(state)
    progress.append(member_progress)
  return jax.tree.map(lambda *xs: jnp.stack(xs), *restored), progress


def evaluate_members(eval_step, states, dataset: data.Dataset, batch_size: int,
                     sharding) -> list[dict[str, float]]:
  """Returns each member's {'loss', 'accuracy', 'count'} over the whole eval split."""
  from cnn_jax.train import eval_batches, eval_sums  # pylint: disable=g-import-not-at-top
  totals = eval_sums(eval_step, states, eval_batches(dataset, batch_size, sharding))
  return [{'loss': float(loss / count), 'accuracy': float(correct / count), 'count': float(count)}
          for loss, correct, count in zip(totals['loss_sum'], totals['correct'], totals['count'])]


def _summarise(workdir: str, workdirs: list[str], member_cfgs, values: dict[str, np.ndarray],
               finals: list[dict]):
  """Writes population.json and prints the members ranked by eval accuracy."""
  from cnn_jax.train import log  # pylint: disable=g-import-not-at-top
  rows = [{'member': os.path.relpath(workdirs[i], workdir), 'seed': cfg.seed,
           **{key: float(v[i]) for key, v in values.items()}, **finals[i]}
          for i, cfg in enumerate(member_cfgs)]
  if distributed.is_main_process():
    with open(os.path.join(workdir, SUMMARY_FILE), 'w', encoding='utf-8') as f:
      json.dump({'members': rows}, f, indent=1)
  ranked = sorted(rows, key=lambda r: -r['accuracy'])
  header = ['member', 'seed', *values, 'accuracy', 'loss']
  cell = lambda v: f'{v:.4g}' if isinstance(v, float) else str(v)
  widths = [max(len(h), *(len(cell(r[h])) for r in rows)) for h in header]
  log('  '.join(h.rjust(w) for h, w in zip(header, widths)))
  for r in ranked:
    log('  '.join(cell(r[h]).rjust(w) for h, w in zip(header, widths)))


def train_population(config: ml_collections.ConfigDict, workdir: str,
                     member_workdirs: list[str] | None = None) -> dict[str, float]:
  """Trains config.population.size models at once, or resumes them; see the module docstring.

  `member_workdirs` puts the members elsewhere than WORKDIR/member_XX (a sweep's trial
  directories); WORKDIR then holds only population.json.

  Returns:
    The best member's final evaluation metrics, with its index under 'member'.

  Raises:
    UserError: a mistake in the config or data, or member workdirs this config cannot resume.
    signals.TrainingInterrupted: SIGTERM or Ctrl-C; every member was checkpointed first.
  """
  from cnn_jax import train  # pylint: disable=g-import-not-at-top (train dispatches here)
  mesh = Mesh(np.asarray(jax.devices()), ('data',))
  validate_config(config, num_devices=mesh.size)
  member_cfgs = member_configs(config)
  values = varied_values(config, member_cfgs)
  size = len(member_cfgs)
  spec = train.data_spec(config)
  info = data.describe_dataset(spec)
  model = train.build_model(config, info.num_classes)
  models.check_fits(model, info.image_shape)

  started = time.time()
  dataset = data.load_dataset(spec, config.data.train_split, config.data.eval_split)
  train.report_skipped(dataset, workdir)
  per_epoch = data.steps_per_epoch(len(dataset.train), config.batch_size)
  num_steps = config.num_steps or math.ceil(config.num_epochs * per_epoch)
  eval_every = config.eval_every_steps or per_epoch
  shuffle_seed = member_cfgs[0].shuffle_seed
  train.log(f'Population of {size} {config.model.name} models on {info.name}, varying '
            f'{", ".join(["seed", *values])}; {num_steps:,} steps of {config.batch_size}.')

  population = Population(config, model, num_steps)
  replicated = NamedSharding(mesh, PartitionSpec())
  batch_sharding = NamedSharding(mesh, PartitionSpec('data'))
  device_values = {k: jnp.asarray(v) for k, v in values.items()}
  seeds = jnp.asarray([cfg.seed for cfg in member_cfgs])
  states = jax.jit(jax.vmap(lambda s, v: population.init(s, v, info.image_shape)),
                   out_shardings=replicated)(seeds, device_values)
  workdirs = member_workdirs or [member_dir(workdir, i) for i in range(size)]
  ckpt = config.checkpoint
  managers = [checkpoint.open_manager(w, ckpt.keep_last, ckpt.keep_best, ckpt.best_metric)
              for w in workdirs]
  try:
    progress = [{}] * size
    if any(m.latest_step() is not None for m in managers):
      states, progress = _restore_members(managers, states, member_cfgs, workdirs)
    if distributed.is_main_process():
      for w, cfg in zip(workdirs, member_cfgs):
        save_run_record(w, cfg)
        save_dataset_record(w, dataset.info, dataset.normalizer)
    options = cpu_kernels.compiler_options(config.cpu_kernels)
    train_step = jax.jit(jax.vmap(population.train_step, in_axes=(0, 0, None)),
                         donate_argnums=0, compiler_options=options)
    eval_step = jax.jit(jax.vmap(steps.eval_step_fn(model), in_axes=(0, None)))

    start_step = int(jax.device_get(states.step[0]))
    writers = [MetricWriter(w, resume_step=start_step, elapsed=p.get('elapsed', 0.0),
                            enabled=distributed.is_main_process())
               for w, p in zip(workdirs, progress)]
    sums = np.asarray([[p.get('train_sums', {}).get(k, 0.0) for k in ('loss', 'accuracy', 'count')]
                       for p in progress], np.float64)  # [N, 3]
    pending, finals = [], [{}] * size
    bar = tqdm(initial=start_step, total=num_steps, unit='step', dynamic_ncols=True,
               disable=None if config.progress_bar and distributed.is_main_process() else True)
    with signals.StopRequest() as stop:
      for step in range(start_step, num_steps):
        batch = data.train_batch(dataset.train, dataset.normalizer, config.batch_size,
                                 shuffle_seed, step)
        states, metrics = train_step(states, device_values,
                                     distributed.to_global(batch, batch_sharding))
        pending.append(metrics)
        done = step + 1
        bar.update(1)
        if done % config.log_every_steps == 0 or done == num_steps:
          sums = _accumulate(sums, pending)
          for i, writer in enumerate(writers):
            writer.write(done, 'train', {'loss': sums[i, 0] / sums[i, 2],
                                         'accuracy': sums[i, 1] / sums[i, 2]})
          sums[:] = 0
        evaluated = done % eval_every == 0 or done == num_steps
        if evaluated:
          finals = evaluate_members(eval_step, states, dataset, config.eval_batch_size,
                                    batch_sharding)
          for writer, metrics_i in zip(writers, finals):
            writer.write(done, 'eval', metrics_i)
          accuracies = [f['accuracy'] for f in finals]
          if distributed.is_main_process():
            bar.write(f'step {done:>6,}/{num_steps:,}  {config.data.eval_split} accuracy: best '
                      f'{max(accuracies):.2%} (member {int(np.argmax(accuracies))}), median '
                      f'{np.median(accuracies):.2%}, worst {min(accuracies):.2%}  '
                      f'({time.time() - started:.1f} s)')
        if (done == num_steps or stop.requested
            or (evaluated if not ckpt.every_steps else done % ckpt.every_steps == 0)):
          sums = _accumulate(sums, pending)  # The running sums travel in the checkpoints.
          for i, (manager, writer) in enumerate(zip(managers, writers)):
            member_sums = dict(zip(('loss', 'accuracy', 'count'), sums[i].tolist()))
            checkpoint.save(manager, _member(states, i),
                            {'train_sums': member_sums, 'elapsed': writer.elapsed()},
                            finals[i] if evaluated else None)
        if stop.requested:
          break
    bar.close()
    for writer in writers:
      writer.close()
    for manager in managers:
      manager.wait_until_finished()
    if stop.requested:
      raise signals.TrainingInterrupted(stop.signum, done)
    if not finals[0]:  # Re-running a finished population: report its result.
      finals = evaluate_members(eval_step, states, dataset, config.eval_batch_size,
                                batch_sharding)
  finally:
    for manager in managers:
      manager.close()

  os.makedirs(workdir, exist_ok=True)
  _summarise(workdir, workdirs, member_cfgs, values, finals)
  best = int(np.argmax([f['accuracy'] for f in finals]))
  train.log(f'Best member: {best} ({workdirs[best]}), {config.data.eval_split} accuracy '
            f'{finals[best]["accuracy"]:.2%}; {size} models, {num_steps:,} steps in '
            f'{time.time() - started:.1f} s.')
  return {**finals[best], 'member': best}


def _accumulate(sums: np.ndarray, pending: list) -> np.ndarray:
  """Adds the pending per-step metrics ([N] each) into the [N, 3] running sums, in float64."""
  for metrics in jax.device_get(pending):
    sums[:, 0] += metrics['loss']
    sums[:, 1] += metrics['accuracy']
    sums[:, 2] += 1
  pending.clear()
  return sums
