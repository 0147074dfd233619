"""Configs: every shipped config validates and builds its model; each mistake names its key."""

import json

import jax
import jax.numpy as jnp
import pytest
import tensorflow_datasets as tfds

from cnn_jax import data, models
from cnn_jax.models import summary
from cnn_jax.training import losses, setup, workdir
from cnn_jax.training.validation import config_problems, validate_config
from cnn_jax.errors import UserError
from conftest import CONFIG_NAMES, load_config


@pytest.mark.parametrize('name,arg', [(name, None) for name in CONFIG_NAMES] +
                         [(name, 'small') for name in CONFIG_NAMES if name != 'default'] +
                         [('fashion_mnist', 'long')])
def test_shipped_configs_are_valid_and_their_models_fit_their_images(name, arg):
  config = load_config(name, arg)
  validate_config(config)
  if config.data.name in ('image_folder', 'csv', 'idx'):  # Files the example script makes.
    size = config.data.image_size
    num_classes, image_shape = 10, (size, size, config.data.channels or 3)
  else:
    with tfds.testing.mock_data(num_examples=2):  # Only the metadata is read.
      info = data.describe_dataset(setup.data_spec(config))
    num_classes, image_shape = info.num_classes, info.image_shape
  model = setup.build_model(config, num_classes)
  models.check_fits(model, image_shape)
  assert summary.summarize(model, image_shape)[-1].output_shape == (num_classes,)


def test_keras_seed_is_the_articles_network():
  config = load_config('keras_seed')
  model = setup.build_model(config, 2)
  rows = {r.name: r for r in summary.summarize(model, (300, 300, 3))}
  assert rows['conv_0'].output_shape == (296, 296, 10)  # (300 − 5 + 0)/1 + 1
  assert rows['pool_0'].output_shape == (148, 148, 10)
  assert sum(r.params for r in rows.values()) == 438_842


@pytest.mark.parametrize('key,value,expected', [
    ('batch_size', 0, 'config.batch_size=0 must be ≥ 1'),
    ('eval_batch_size', -3, 'config.eval_batch_size=-3'),
    ('num_epochs', -1.0, 'config.num_epochs=-1.0'),
    ('label_smoothing', 1.0, 'config.label_smoothing'),
    ('dtype', 'float16', "config.dtype='float16' is not one of float32, bfloat16"),
    ('optimizer.name', 'adm', "did you mean 'adam'"),
    ('optimizer.schedule', 'cosin', "did you mean 'cosine'"),
    ('optimizer.learning_rate', 0.0, 'config.optimizer.learning_rate=0.0 must be > 0'),
    ('optimizer.momentum', 1.5, 'config.optimizer.momentum'),
    ('model.name', 'resnt18', "did you mean 'resnet18'"),
    ('data.image_size', -1, 'config.data.image_size'),
])
def test_bad_values_name_the_key_and_what_is_allowed(key, value, expected):
  config = load_config('digits')
  section, _, field = key.rpartition('.')
  (config[section] if section else config)[field] = value
  with pytest.raises(UserError) as error:
    validate_config(config)
  assert expected in str(error.value)


def test_all_problems_are_reported_at_once():
  config = load_config('digits')
  config.batch_size = 0
  config.optimizer.name = 'nope'
  assert len(config_problems(config)) == 2


def test_a_setting_the_model_does_not_take_is_refused():
  config = load_config('mnist')  # keras_mnist
  config.model.featurs = (8,)
  with pytest.raises(UserError, match=r"config.model.featurs .*did you mean 'features'"):
    validate_config(config)


def test_batch_size_must_divide_among_devices():
  config = load_config('digits')
  config.batch_size = 30
  assert any('multiple of the 4 devices' in p for p in config_problems(config, num_devices=4))


def test_a_kernel_too_large_for_the_image_is_a_user_error():
  config = load_config('digits')
  config.model.kernel_size = 9
  config.model.padding = 'VALID'
  model = setup.build_model(config, 10)
  with pytest.raises(UserError, match=r'conv_0.*8×8.*\(W − F \+ 2P\)/S \+ 1'):
    models.check_fits(model, (8, 8, 1))


@pytest.mark.parametrize('name', ['digits', 'mnist', 'fashion_mnist', 'cats_vs_dogs',
                                  'keras_seed'])
def test_small_variants_shorten_training_and_change_nothing_else(name):
  full, small = load_config(name).to_dict(), load_config(name, 'small').to_dict()
  assert small['num_epochs'] < full['num_epochs']
  shrunk = {('data', 'train_split'), ('data', 'eval_split'), ('data', 'test_split'),
            ('data', 'image_size'), ('num_epochs',), ('log_every_steps',)}
  for key in shrunk:
    section_full, section_small = (full, small) if len(key) == 1 else (full[key[0]], small[key[0]])
    section_full[key[-1]] = section_small[key[-1]]
  assert full == small


def test_an_older_config_json_is_brought_up_to_today_in_one_place(tmp_path):
  """A workdir written before config.speed (schema 1: speed settings at the top level, no
  data.test_split) reads back in today's layout, with what its absent keys meant."""
  old = json.loads(load_config('digits').to_json_best_effort())
  speed_settings = old.pop('speed')
  old.update({'cpu_kernels': 'xla', 'pool_first': False})
  old['population']['vectorize'] = 'vmap'
  del old['data']['test_split'], old['compilation_cache'], old['loss']
  (tmp_path / workdir.CONFIG_FILE).write_text(json.dumps(old))
  config = workdir.load_run_config(str(tmp_path))
  assert config.speed.cpu_kernels == 'xla' and config.speed.pool_first is False
  assert config.speed.population_vectorize == 'vmap' and 'vectorize' not in config.population
  assert config.speed.steps_per_dispatch == speed_settings['steps_per_dispatch']
  assert 'cpu_kernels' not in config and 'pool_first' not in config
  assert config.data.test_split == ''  # No test split then: none now.
  assert config.compilation_cache == 'auto' and config.loss == 'cross_entropy'  # Defaults.
  validate_config(config)
  # A run written today says its schema, and reads back as it was saved.
  workdir.save_run_record(str(tmp_path / 'new'), load_config('digits'))
  saved = json.loads((tmp_path / 'new' / workdir.CONFIG_FILE).read_text())
  assert saved[workdir.SCHEMA_KEY] == workdir.SCHEMA
  assert workdir.config_differences(workdir.load_run_config(str(tmp_path / 'new')),
                                    load_config('digits')) == {}


def test_the_loss_is_looked_up_by_name_and_a_new_one_can_be_registered():
  config = load_config('digits')
  config.loss = 'cross_entropie'
  assert any("did you mean 'cross_entropy'" in p for p in config_problems(config))
  squared = lambda logits, labels, smoothing: jnp.sum(
      (jax.nn.softmax(logits) - jax.nn.one_hot(labels, logits.shape[-1])) ** 2, axis=-1)
  losses.register('test_squared_error', squared)
  try:
    config.loss = 'test_squared_error'
    assert config_problems(config) == []
    assert losses.get('test_squared_error') is squared
    with pytest.raises(ValueError, match='built-in loss'):
      losses.register('cross_entropy', squared)
  finally:
    del losses.LOSSES['test_squared_error']
  with pytest.raises(UserError, match='registered: cross_entropy'):
    losses.get('test_squared_error')
