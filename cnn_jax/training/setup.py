"""The one place that turns a config into objects: data spec, data, model, optimizer, and plan.

Every tool (train, population, evaluate, predict, benchmark, sweep, time to accuracy) asks this
module for these objects; nothing else reads the optimizer, model or plan fields of a config, so
a setting means the same thing in every command.
"""

import dataclasses
import math

import jax
import jax.numpy as jnp
import ml_collections
import optax

from cnn_jax import data, models
from cnn_jax.training import optim

DTYPES = {'float32': jnp.float32, 'bfloat16': jnp.bfloat16}


def data_spec(config: ml_collections.ConfigDict) -> data.DataSpec:
  """Returns the data layer's explicit description of config.data."""
  fields = {f.name for f in dataclasses.fields(data.DataSpec)}
  return data.DataSpec(**{k: v for k, v in config.data.items() if k in fields})


def load_data(config: ml_collections.ConfigDict, source: data.Source):
  """Returns the config's training, eval and test data from `source` (opened from
  `data_spec(config)`): streamed (`data.stream`) or held in memory."""
  load = data.stream_dataset if config.data.stream else data.load_dataset
  # `get`: a config.json written before test_split existed lacks it.
  return load(source, config.data.train_split, config.data.eval_split,
              config.data.get('test_split') or None)


def model_kwargs(model_config: ml_collections.ConfigDict) -> dict:
  """Returns config.model without 'name' as keyword arguments; lists become tuples."""
  kwargs = model_config.to_dict()
  kwargs.pop('name', None)
  return {k: tuple(v) if isinstance(v, list) else v for k, v in kwargs.items()}


# config.precision → the `precision` of the models' convolutions and dense layers.
PRECISIONS = {'default': None, 'high': 'high', 'highest': 'highest'}
# Settings that change how a model computes, not what: True, False or 'auto' (on CPU only); each
# with the value a run's config.json written before the setting existed stands for.
PLATFORM_TRICKS = {'pool_first': True, 'pool_by_reshape': True, 'batch_norm_by_matmul': 'auto'}


def build_model(config: ml_collections.ConfigDict, num_classes: int,
                platform: str | None = None):
  """Returns the Flax module named by config.model, for `num_classes` outputs, computing as
  config.precision and the PLATFORM_TRICKS say on `platform` (None: this process's devices')."""
  kwargs = model_kwargs(config.model)
  fields = models.model_fields(config.model.name)
  platform = platform or jax.devices()[0].platform
  for trick, absent in PLATFORM_TRICKS.items():
    if trick in fields:
      value = config.get(trick, absent)
      kwargs[trick] = platform == 'cpu' if value == 'auto' else value
  if 'precision' in fields:
    kwargs['precision'] = PRECISIONS[config.get('precision', 'default')]
  return models.create_model(config.model.name, num_classes, dtype=DTYPES[config.dtype], **kwargs)


def build_schedule(config: ml_collections.ConfigDict, num_steps: int,
                   learning_rate: float | jax.Array | None = None) -> optax.Schedule:
  """Returns config.optimizer's learning-rate schedule over `num_steps`.

  `learning_rate` replaces the config's peak (a population member's traced value).
  """
  opt = config.optimizer
  peak = opt.learning_rate if learning_rate is None else learning_rate
  return optim.create_schedule(opt.schedule, peak, num_steps, opt.warmup_steps)


def build_optimizer(config: ml_collections.ConfigDict, num_steps: int,
                    learning_rate: float | jax.Array | None = None,
                    weight_decay: float | jax.Array | None = None
                    ) -> tuple[optax.GradientTransformation, optax.Schedule]:
  """Returns (optimizer, schedule) of config.optimizer for a run of `num_steps`.

  `learning_rate` and `weight_decay` replace the config's values (a population member's traced
  values); the optimizer state's structure does not depend on them.
  """
  opt = config.optimizer
  schedule = build_schedule(config, num_steps, learning_rate)
  decay = opt.weight_decay if weight_decay is None else weight_decay
  return optim.create_optimizer(opt.name, schedule, opt.momentum, opt.nesterov, decay,
                                opt.grad_clip_norm), schedule


def shuffle_seed(config: ml_collections.ConfigDict) -> int:
  """The seed of the training batches' order: `shuffle_seed`, else `seed` (`get`: a config
  written before `shuffle_seed` existed lacks the field)."""
  seed = config.get('shuffle_seed')
  return config.seed if seed is None else seed


def itstime(step: int, every: int, total: int) -> bool:
  """True at step `step` (counted after the update) for something done every `every` steps and
  at the end of training; `every` 0 means only at the end."""
  return step == total or bool(every) and step % every == 0


@dataclasses.dataclass(frozen=True)
class Plan:
  """How long a run trains and when it stops to log, evaluate and save."""
  num_steps: int  # Training length in steps.
  steps_per_epoch: int  # Full batches per pass over the training split.
  log_every: int  # Train metrics are written every this many steps.
  eval_every: int  # The eval split is evaluated every this many steps.
  save_every: int  # A checkpoint is saved every this many steps.
  save_every_minutes: float  # ... and when this much time passed since the last; 0 = never.
  shuffle_seed: int  # The seed of the training batches' order.
  steps_per_dispatch: int  # Training steps one compiled call runs.

  def due(self, step: int) -> dict[str, bool]:
    """{'log', 'eval', 'save'}: what is due after `step` steps (always all at the end)."""
    return {'log': itstime(step, self.log_every, self.num_steps),
            'eval': itstime(step, self.eval_every, self.num_steps),
            'save': itstime(step, self.save_every, self.num_steps)}

  def next_stop(self, step: int) -> int:
    """The first step after `step` at which the loop must regain control: the end, or the next
    log, evaluation or save."""
    periods = (self.log_every, self.eval_every, self.save_every)
    return min([self.num_steps] + [(step // p + 1) * p for p in periods if p])


def steps_per_dispatch(config: ml_collections.ConfigDict, per_epoch: int,
                       periods: tuple[int, ...] = (), platform: str | None = None) -> int:
  """Training steps run by one compiled call: config.steps_per_dispatch, or for 0 (auto), with
  the data on a GPU or TPU, a whole epoch or the shortest of `periods` (the steps between logs,
  evaluations and saves) if fewer, and 1 otherwise.

  A call ends at each of those stops, and a shorter call runs the same program with steps
  skipped: the shortest period keeps the skipped steps rare. On a CPU, XLA runs convolutions
  inside a loop several times slower than the same step called from Python (see
  experiments/benchmarks/RESULTS.md), so auto never scans there. `platform`: the devices'
  ('cpu', 'gpu', 'tpu'); None: this process's.
  """
  if config.steps_per_dispatch:
    return config.steps_per_dispatch
  on_accelerator = (platform or jax.devices()[0].platform) != 'cpu'
  if not (config.data.on_device and on_accelerator):
    return 1
  return min([per_epoch] + [p for p in periods if p])


def make_plan(config: ml_collections.ConfigDict, num_train_examples: int) -> Plan:
  """Returns the run's plan for a training split of `num_train_examples` examples."""
  per_epoch = data.steps_per_epoch(num_train_examples, config.batch_size)
  eval_every = config.eval_every_steps or per_epoch
  save_every = config.checkpoint.every_steps or eval_every
  periods = (config.log_every_steps, eval_every, save_every)
  return Plan(num_steps=config.num_steps or math.ceil(config.num_epochs * per_epoch),
              steps_per_epoch=per_epoch, log_every=config.log_every_steps, eval_every=eval_every,
              save_every=save_every, save_every_minutes=config.checkpoint.every_minutes,
              shuffle_seed=shuffle_seed(config),
              steps_per_dispatch=steps_per_dispatch(config, per_epoch, periods))
