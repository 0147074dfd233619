"""Real data, offline: the Fashion-MNIST that Debian's dataset-fashion-mnist installs (`.ci/run`
installs it; elsewhere: apt-get install dataset-fashion-mnist)."""

import json
import os
import subprocess
import sys

import pytest

import cnn_jax
from cnn_jax import cli, data
from cnn_jax.data import sources
from cnn_jax.training import train
from conftest import load_config

FASHION_MNIST = sources.SYSTEM_COPIES['fashion_mnist'][1]
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
needs_fashion_mnist = pytest.mark.skipif(
    not os.path.isdir(FASHION_MNIST),
    reason=f'{FASHION_MNIST} is absent: apt-get install dataset-fashion-mnist')


@needs_fashion_mnist
def test_the_debian_files_are_recognised_as_fashion_mnist():
  info = data.describe_dataset(data.DataSpec('idx', path=FASHION_MNIST))
  assert info.name == 'fashion_mnist' and info.class_names[9] == 'Ankle boot'
  test = data.load_split(data.DataSpec('idx', path=FASHION_MNIST), 'test')
  assert test.images.shape == (10_000, 28, 28, 1) and test.labels[:4].tolist() == [9, 2, 1, 1]


@needs_fashion_mnist
def test_the_fashion_config_learns_the_real_files(tmp_path):
  """The config as a user runs it (no data flag), shortened: one epoch of 10,000 training images,
  scored on all 10,000 test images."""
  config = load_config('fashion_mnist')
  config.data.train_split = 'train[:10000]'
  config.num_epochs, config.batch_size, config.optimizer.warmup_steps = 1.0, 64, 10
  config.augment.crop_padding, config.augment.horizontal_flip = 0, False
  config.augment.test_flip = True  # Scored on each image and its mirror, here and after.
  config.progress_bar = False
  result = train.train_and_evaluate(config, str(tmp_path))
  test = result['test']  # The checkpoint chosen on validation (1,000 of the 10,000), tested.
  assert test['count'] == 10_000 and test['accuracy'] > 0.7  # Chance is 10%; 77.5% measured.
  assert cnn_jax.load(str(tmp_path)).evaluate('test')['accuracy'] == test['accuracy']


@needs_fashion_mnist
def test_the_accelerator_script_runs_every_measurement(tmp_path):
  """experiments/benchmarks/accelerator.py, prepared for the first GPU or TPU lent: its quick
  form on this CPU, so that it does not break unnoticed before then."""
  script = os.path.join(REPO, 'experiments', 'benchmarks', 'accelerator.py')
  out = tmp_path / 'figures.json'
  done = subprocess.run([sys.executable, script, '--fashion_dir', FASHION_MNIST, '--quick',
                         '--json', str(out)], cwd=tmp_path, capture_output=True, text=True,
                        timeout=600, check=False)
  assert done.returncode == 0, done.stderr[-3000:]
  figures = json.loads(out.read_text())
  assert [(r['config'], r['batch_size']) for r in figures['throughput']] == [
      ('mnist', 128), ('mnist', 256), ('fashion_mnist', 128), ('fashion_mnist', 256)]
  assert all(r['train_loop_images_per_s'] > 0 for r in figures['throughput'])
  assert min(figures['dispatch'].values()) > 0
  runs = figures['time_to_accuracy']
  assert [r['recipe'] for r in runs] == ['fashion_mnist', 'fashion_mnist_resnet',
                                         'fashion_mnist_resnet18']
  assert all(0 <= r['test_accuracy'] <= 1 and r['wall_s'] > 0 for r in runs)
  # Better than chance after a few steps; not asked of the stretch recipe, whose random erasing
  # and 18 layers need more than the quick form's 12 steps.
  assert all(r['test_accuracy'] > 0.1 for r in runs[:2])
  assert figures['population']['size'] == 4
  assert '4. A population against one model' in done.stdout


def test_the_longer_fashion_recipe_trains(tmp_path):
  """experiments/recipes/fashion_mnist_resnet.py (its measured run: experiments/README.md) loads
  as a config, and its quick form trains 5 steps on the real files."""
  recipe = cli.config_module(os.path.join(REPO, 'experiments', 'recipes',
                                          'fashion_mnist_resnet.py'))
  assert recipe.get_config().num_epochs == 25.0
  config = recipe.get_config('small')
  assert config.model.name == 'resnet_small' and config.optimizer.name == 'adamw'
  config.progress_bar, config.num_steps = False, 5
  config.data.train_split = 'train[:640]'
  if not os.path.isdir(FASHION_MNIST):
    pytest.skip(f'{FASHION_MNIST} is absent: apt-get install dataset-fashion-mnist')
  result = train.train_and_evaluate(config, str(tmp_path))
  assert result['test']['count'] > 0 and 0.0 <= result['test']['accuracy'] <= 1.0


def test_the_accelerator_script_names_a_missing_data_directory(tmp_path):
  script = os.path.join(REPO, 'experiments', 'benchmarks', 'accelerator.py')
  done = subprocess.run([sys.executable, script, '--fashion_dir', str(tmp_path / 'absent')],
                        capture_output=True, text=True, timeout=300, check=False)
  assert done.returncode == 2 and 'no such directory' in done.stderr
  assert 'Traceback' not in done.stderr
