"""Every config field of configs/default.py, given bad values: each is refused with a message.

A value is set the way `--config.KEY=VALUE` sets it, then the run starts as `cnn_jax.main` starts
it. The command line turns a flag error and a UserError into one message and exit 2 (tested
through real processes in test_cli.py); anything else, or a run that starts, fails here.
"""

import os

import numpy as np
import pytest
from absl import flags
from ml_collections import config_flags
from PIL import Image

from cnn_jax.errors import UserError
from cnn_jax.training import train
from conftest import REPO, load_config

# ml_collections loads the config file with a deprecated importlib call, once per case.
pytestmark = pytest.mark.filterwarnings('ignore:the load_module:DeprecationWarning')

# (key, bad values, other overrides that make the key matter). A value is written as on the
# command line. Every field of configs/default.py has a row (test_every_field_has_a_row).
BAD_VALUES = [
    ('seed', ['abc', '1.5', '-1'], []),
    ('shuffle_seed', ['abc', '-1'], []),
    ('data.name', ['nonsense', ''], []),
    ('data.tfds_data_dir', ['/nonexistent'], ['data.name=mnist']),
    ('data.download', ['maybe'], []),
    ('data.train_split', ['nonsense', 'train[:0]', 'train[50%:10%]'], []),
    ('data.eval_split', ['nonsense', ''], []),
    ('data.test_split', ['nonsense', 'test[7:3]'], []),
    ('data.path', ['/nonexistent', ''], ['data.name=idx']),
    ('data.image_size', ['-1', 'abc'], []),
    ('data.channels', ['2', '-1'], []),
    ('data.resize', ['stretch'], []),
    ('data.validation_fraction', ['-0.1', '1.0', 'abc'], []),
    ('data.split_seed', ['abc', '-1'], []),
    ('data.max_skip_fraction', ['-0.1', '2'], []),
    ('data.workers', ['-1'], []),
    ('data.cache', ['maybe'], []),
    ('data.stream', ['maybe'], []),
    ('data.worker_processes', ['-1'], []),
    ('data.prefetch', ['0'], []),
    ('data.on_device', ['maybe'], []),
    ('speed.steps_per_dispatch', ['-1'], []),
    ('data.csv', ['/nonexistent.csv', ''], ['data.name=csv', 'data.path=/tmp']),
    ('data.csv_file_column', ['no_such_column'], 'csv'),
    ('data.csv_label_column', ['no_such_column'], 'csv'),
    ('data.class_names', ['(a,b)', '(a,a,b,c,d,e,f,g,h,i)'], []),
    ('augment.crop_padding', ['-1'], []),
    ('augment.horizontal_flip', ['True'], []),  # Digits: a mirrored 2 is not a 2.
    ('augment.test_flip', ['True', '2'], []),  # Nor at test time.
    ('augment.rotation_degrees', ['-1', '181'], []),
    ('augment.erase_probability', ['-0.1', '1.5'], []),
    ('model.name', ['nonsense'], []),
    ('model.features', ['abc', '(0,16)', '(-8,16)', '(8.5,16)', '()'], []),
    ('model.kernel_size', ['0', '-3', '40'], ['model.padding=VALID']),
    ('model.strides', ['0'], []),
    ('model.padding', ['SAMEX'], []),
    ('model.activation', ['relux'], []),
    ('model.pool', ['maxx'], []),
    ('model.pool_window', ['0', '40'], []),
    ('model.pool_stride', ['0'], []),
    ('model.batch_norm', ['maybe'], []),
    ('model.conv_dropout', ['1.0', '-0.1'], []),
    ('model.dense', ['abc', '(0,)'], []),
    ('model.dense_dropout', ['1.0', '-0.1'], []),
    ('model.initializer', ['hee'], []),
    ('optimizer.name', ['adamx'], []),
    ('optimizer.learning_rate', ['0', '-1', 'abc'], []),
    ('optimizer.schedule', ['cosinex'], []),
    ('optimizer.warmup_steps', ['-1'], []),
    ('optimizer.momentum', ['1.0', '-0.1'], []),
    ('optimizer.nesterov', ['maybe'], []),
    ('optimizer.weight_decay', ['-1'], []),
    ('optimizer.grad_clip_norm', ['-1'], []),
    ('loss', ['cross_entropie'], []),
    ('stop_on_nan', ['maybe'], []),
    ('label_smoothing', ['1.0', '-0.1'], []),
    ('batch_size', ['0', '-1', 'abc'], []),
    ('eval_batch_size', ['0'], []),
    ('num_epochs', ['-1', 'abc'], ['num_steps=0']),
    ('num_steps', ['-1', '1.5'], []),
    ('dtype', ['float16'], []),
    ('speed.cpu_kernels', ['mkl'], []),
    ('speed.pool_first', ['maybe'], []),
    ('speed.pool_by_reshape', ['sometimes'], []),
    ('speed.batch_norm_by_matmul', ['always'], []),
    ('speed.keep_freed_memory', ['sometimes'], []),
    ('speed.cpu_async_dispatch', ['maybe'], []),
    ('precision', ['fp8'], []),
    ('compilation_cache', ['/etc/hostname'], []),
    ('population.size', ['-1'], []),
    ('speed.population_vectorize', ['pmap'], []),
    ('population.seeds', ['(1,2)'], ['population.size=3']),
    ('population.learning_rates', ['(0.1,-1)', '(0.1,0.2,0.3)'], ['population.size=2']),
    ('population.weight_decays', ['(-1,0)'], ['population.size=2']),
    ('population.label_smoothings', ['(2,0)'], ['population.size=2']),
    ('population.dense_dropouts', ['(1.5,0)'], ['population.size=2']),
    ('population.conv_dropouts', ['(1.5,0)'], ['population.size=2']),
    ('checkpoint.every_steps', ['-1'], []),
    ('checkpoint.every_minutes', ['-1'], []),
    ('checkpoint.keep_last', ['0'], []),
    ('checkpoint.keep_best', ['-1'], []),
    ('checkpoint.best_metric', ['f1'], []),
    ('init_from', ['/nonexistent', '/tmp'], []),
    ('init_layers', ['some'], []),
    ('log_every_steps', ['0'], []),
    ('eval_every_steps', ['-1'], []),
    ('progress_bar', ['maybe'], []),
]


def _leaves(config, prefix=''):
  for key, value in config.items():
    if hasattr(value, 'items'):
      yield from _leaves(value, f'{prefix}{key}.')
    else:
      yield prefix + key


@pytest.fixture(scope='module')
def csv_dataset(tmp_path_factory):
  """A two-class CSV dataset of PNG files: ('data.name=csv', 'data.path=…', 'data.csv=…')."""
  root = tmp_path_factory.mktemp('csv')
  rows = ['filename,label']
  for i in range(20):
    Image.fromarray(np.full((8, 8), 12 * i, np.uint8)).save(root / f'{i}.png')
    rows.append(f'{i}.png,{"ab"[i % 2]}')
  (root / 'labels.csv').write_text('\n'.join(rows) + '\n')
  return ['data.name=csv', f'data.path={root}', f'data.csv={root / "labels.csv"}',
          'data.channels=1']


def test_every_field_has_a_row():
  assert sorted(_leaves(load_config('default'))) == sorted(key for key, _, _ in BAD_VALUES)


def _refusal(overrides: list[str], workdir: str) -> str:
  """Runs configs/default.py with `overrides` until it is refused; returns the message."""
  argv = ['cnn_jax.main', f'--config={os.path.join(REPO, "configs", "default.py")}',
          *(f'--config.{o}' for o in overrides)]
  values = flags.FlagValues()
  config_flags.DEFINE_config_file('config', flag_values=values, lock_config=True, sys_argv=argv)
  try:
    values(argv)
  except flags.Error as e:
    return str(e)
  # A value that slips through would train: two steps, then the test fails.
  with pytest.raises(UserError) as refused:
    train.train_and_evaluate(values.config, workdir)
  return str(refused.value)


@pytest.mark.parametrize('key,value,context',
                         [(key, value, context) for key, values, context in BAD_VALUES
                          for value in values])
def test_a_bad_value_is_refused_with_its_key_named(key, value, context, csv_dataset, tmp_path):
  context = csv_dataset if context == 'csv' else context
  steps = [] if key in ('num_steps', 'num_epochs') else ['num_steps=2']
  message = _refusal([*context, *steps, f'{key}={value}'], str(tmp_path / 'w'))
  leaf = key.rsplit('.', 1)[-1]
  assert leaf in message or value.strip("'") in message, message
