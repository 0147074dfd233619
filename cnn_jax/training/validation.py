"""Checks a config before any work starts, so a mistake costs seconds, not a training run.

Every problem found is reported at once, each naming its key, the bad value and what is allowed.
"""

import difflib
import math

import ml_collections

from cnn_jax import data, models, speed
from cnn_jax.training import losses, optim
from cnn_jax.training.checkpoint import BEST_METRICS
from cnn_jax.training.setup import PRECISIONS
from cnn_jax.errors import UserError

DTYPES = ('float32', 'bfloat16')
CLASS_NAMES_READ_BY = ('csv', 'idx')  # The sources that take config.data.class_names.
INIT_LAYERS = ('all', 'matching')
# Model fields set from elsewhere than config.model: the dataset, config.dtype, config.precision
# and config.speed (the layers a model builds from).
GLOBAL_MODEL_FIELDS = ('num_classes', 'dtype', 'precision', 'layer_set')


def _suggest(value, allowed) -> str:
  close = difflib.get_close_matches(str(value), [str(a) for a in allowed], n=1)
  return f' (did you mean {close[0]!r}?)' if close else ''


def _check_choice(problems, key, value, allowed):
  if value not in allowed:
    problems.append(f'config.{key}={value!r} is not one of {", ".join(map(str, allowed))}'
                    + _suggest(value, allowed))


def _check_number(problems, key, value, low=None, high=None, integer=False, low_open=False):
  kind = 'an integer' if integer else 'a number'
  if isinstance(value, bool) or not isinstance(value, int if integer else (int, float)):
    problems.append(f'config.{key}={value!r} must be {kind}')
  elif not math.isfinite(value):
    problems.append(f'config.{key}={value!r} must be finite')
  elif low is not None and (value <= low if low_open else value < low):
    problems.append(f'config.{key}={value!r} must be {">" if low_open else "≥"} {low}')
  elif high is not None and value > high:
    problems.append(f'config.{key}={value!r} must be ≤ {high}')


def config_problems(config: ml_collections.ConfigDict, num_devices: int = 1) -> list[str]:
  """Returns a list of human-readable problems with `config` ([] when it is valid)."""
  p = []
  _check_number(p, 'seed', config.seed, low=0, integer=True)
  if config.shuffle_seed is not None:
    _check_number(p, 'shuffle_seed', config.shuffle_seed, low=0, integer=True)
  _check_number(p, 'population.size', config.population.size, low=0, integer=True)
  _check_number(p, 'batch_size', config.batch_size, low=1, integer=True)
  _check_number(p, 'eval_batch_size', config.eval_batch_size, low=1, integer=True)
  for key in ('batch_size', 'eval_batch_size'):
    value = config[key]
    if isinstance(value, int) and value >= 1 and value % num_devices:
      p.append(f'config.{key}={value} must be a multiple of the {num_devices} devices in use')
  _check_number(p, 'num_epochs', config.num_epochs, low=0)
  _check_number(p, 'num_steps', config.num_steps, low=0, integer=True)
  if not p and config.num_steps == 0 and config.num_epochs == 0:
    p.append('config.num_epochs and config.num_steps are both 0: set one to the training length')
  _check_number(p, 'log_every_steps', config.log_every_steps, low=1, integer=True)
  _check_choice(p, 'stop_on_nan', config.stop_on_nan, (True, False))
  _check_number(p, 'eval_every_steps', config.eval_every_steps, low=0, integer=True)
  _check_choice(p, 'loss', config.loss, tuple(losses.LOSSES))
  _check_number(p, 'label_smoothing', config.label_smoothing, low=0, high=0.999)
  _check_choice(p, 'dtype', config.dtype, DTYPES)
  p.extend(speed.problems(config.speed, on_device=config.data.on_device))
  _check_choice(p, 'precision', config.precision, tuple(PRECISIONS))
  d = config.data
  _check_number(p, 'data.image_size', d.image_size, low=0, integer=True)
  _check_choice(p, 'data.channels', d.channels, (0, 1, 3))
  _check_choice(p, 'data.resize', d.resize, data.RESIZE_MODES)
  _check_number(p, 'data.validation_fraction', d.validation_fraction, low=0, high=0.99)
  _check_number(p, 'data.split_seed', d.split_seed, low=0, integer=True)
  _check_number(p, 'data.max_skip_fraction', d.max_skip_fraction, low=0, high=1)
  _check_number(p, 'data.workers', d.workers, low=0, integer=True)
  _check_choice(p, 'data.stream', d.stream, (True, False))
  _check_number(p, 'data.worker_processes', d.worker_processes, low=0, integer=True)
  _check_number(p, 'data.prefetch', d.prefetch, low=1, integer=True)
  if d.stream is True and d.on_device:
    p.append('config.data.stream=True reads batches as training goes, and config.data.on_device='
             'True holds the whole split on the device: choose one')
  if isinstance(d.worker_processes, int) and d.worker_processes > 0 and d.stream is not True:
    p.append(f'config.data.worker_processes={d.worker_processes} decodes streamed batches: also '
             'set config.data.stream=True')
  if d.name == 'csv' and not d.csv:
    p.append("config.data.name='csv' reads labels from a CSV: set config.data.csv to its path")
  if d.class_names and d.name not in CLASS_NAMES_READ_BY:
    p.append(f'config.data.class_names names the classes of {" and ".join(CLASS_NAMES_READ_BY)} '
             f'data; {d.name!r} names its own: leave it ()')
  if d.name in ('image_folder', 'csv', 'idx') and not d.path:
    p.append(f"config.data.name={d.name!r} reads files: set config.data.path to their directory")
  opt = config.optimizer
  _check_choice(p, 'optimizer.name', opt.name, optim.OPTIMIZERS)
  _check_choice(p, 'optimizer.schedule', opt.schedule, optim.SCHEDULES)
  _check_number(p, 'optimizer.learning_rate', opt.learning_rate, low=0, low_open=True)
  _check_number(p, 'optimizer.warmup_steps', opt.warmup_steps, low=0, integer=True)
  _check_number(p, 'optimizer.momentum', opt.momentum, low=0, high=0.999)
  _check_number(p, 'optimizer.weight_decay', opt.weight_decay, low=0)
  _check_number(p, 'optimizer.grad_clip_norm', opt.grad_clip_norm, low=0)
  aug = config.augment
  _check_number(p, 'augment.crop_padding', aug.crop_padding, low=0, integer=True)
  _check_number(p, 'augment.rotation_degrees', aug.rotation_degrees, low=0, high=180)
  _check_number(p, 'augment.erase_probability', aug.erase_probability, low=0, high=1)
  p.extend(data.flip_problems(d.name, aug))
  ckpt = config.checkpoint
  _check_number(p, 'checkpoint.every_steps', ckpt.every_steps, low=0, integer=True)
  _check_number(p, 'checkpoint.every_minutes', ckpt.every_minutes, low=0)
  _check_number(p, 'checkpoint.keep_last', ckpt.keep_last, low=1, integer=True)
  _check_number(p, 'checkpoint.keep_best', ckpt.keep_best, low=0, integer=True)
  _check_choice(p, 'checkpoint.best_metric', ckpt.best_metric, tuple(BEST_METRICS))
  _check_choice(p, 'init_layers', config.init_layers, INIT_LAYERS)
  if not isinstance(config.compilation_cache, str):
    p.append(f"config.compilation_cache={config.compilation_cache!r} must be a directory, 'auto' "
             "or '' (no cache)")
  p.extend(_model_problems(config.model))
  return p


def _model_problems(model_config) -> list[str]:
  name = model_config.get('name')
  if name not in models.MODELS:
    return [f'config.model.name={name!r} is not one of {", ".join(sorted(models.MODELS))}'
            + _suggest(name, models.MODELS)]
  accepted = set(models.model_fields(name)) - set(GLOBAL_MODEL_FIELDS)
  unknown = [f'config.model.{key} is not a setting of model {name!r}{_suggest(key, accepted)}; '
             f'it takes: {", ".join(sorted(accepted))}'
             for key in model_config if key != 'name' and key not in accepted]
  if unknown:
    return unknown
  try:  # The model checks its own settings when built (no parameters are made).
    models.create_model(name, 2, **{k: v for k, v in model_config.items() if k != 'name'})
  except UserError as e:
    return [f'config.model: {e}']
  return []


def validate_config(config: ml_collections.ConfigDict, num_devices: int = 1) -> None:
  """Raises UserError listing every problem in `config`; returns None when it is valid."""
  problems = config_problems(config, num_devices)
  if problems:
    raise UserError('The config has ' + ('a problem' if len(problems) == 1 else
                                         f'{len(problems)} problems') + ':\n  - '
                    + '\n  - '.join(problems))

