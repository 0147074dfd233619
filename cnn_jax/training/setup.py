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

from cnn_jax import data, models, speed
from cnn_jax.errors import UserError
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
  return load(source, config.data.train_split, config.data.eval_split,
              config.data.test_split or None)


def model_kwargs(model_config: ml_collections.ConfigDict) -> dict:
  """Returns config.model without 'name' as keyword arguments; lists become tuples."""
  kwargs = model_config.to_dict()
  kwargs.pop('name', None)
  return {k: tuple(v) if isinstance(v, list) else v for k, v in kwargs.items()}


# config.precision → the `precision` of the models' convolutions and dense layers.
PRECISIONS = {'default': None, 'high': 'high', 'highest': 'highest'}


def build_speed(config: ml_collections.ConfigDict, platform: str | None = None) -> speed.Speed:
  """Returns config.speed resolved for `platform` (None: this process's devices')."""
  return speed.resolve(config.speed, platform or jax.devices()[0].platform)


def build_model(config: ml_collections.ConfigDict, num_classes: int,
                run_speed: speed.Speed | None = None):
  """Returns the Flax module named by config.model, for `num_classes` outputs, computing as
  config.precision says, with the layers of `run_speed` (None: the textbook's)."""
  kwargs = model_kwargs(config.model)
  fields = models.model_fields(config.model.name)
  if 'precision' in fields:
    kwargs['precision'] = PRECISIONS[config.precision]
  if run_speed is not None and 'layer_set' in fields:
    kwargs['layer_set'] = run_speed.layer_set
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
  """The seed of the training batches' order: `shuffle_seed`, else `seed`."""
  return config.seed if config.shuffle_seed is None else config.shuffle_seed


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
  stop_on_nan: bool = True  # A training loss that is not finite ends the run (`loop.fit`).

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


def make_plan(config: ml_collections.ConfigDict, num_train_examples: int,
              run_speed: speed.Speed | None = None) -> Plan:
  """Returns the run's plan for a training split of `num_train_examples` examples, with as many
  steps per compiled call as `run_speed` allows (None: one).

  Raises:
    UserError: a batch larger than the training split (it would wrap the split many times).
  """
  if config.batch_size > num_train_examples:
    raise UserError(
        f'config.batch_size={config.batch_size:,} is larger than the training split '
        f'({num_train_examples:,} examples): each batch would go round the split '
        f'{config.batch_size / num_train_examples:.1f} times. Use a batch of at most '
        f'{num_train_examples:,}, e.g. --config.batch_size={min(128, num_train_examples)}.')
  per_epoch = data.steps_per_epoch(num_train_examples, config.batch_size)
  eval_every = config.eval_every_steps or per_epoch
  save_every = config.checkpoint.every_steps or eval_every
  periods = (config.log_every_steps, eval_every, save_every)
  return Plan(num_steps=config.num_steps or math.ceil(config.num_epochs * per_epoch),
              steps_per_epoch=per_epoch, log_every=config.log_every_steps, eval_every=eval_every,
              save_every=save_every, save_every_minutes=config.checkpoint.every_minutes,
              shuffle_seed=shuffle_seed(config), stop_on_nan=config.stop_on_nan,
              steps_per_dispatch=run_speed.steps_per_call(config.data.on_device, per_epoch,
                                                          periods) if run_speed else 1)
