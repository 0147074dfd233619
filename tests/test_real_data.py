"""Real data, offline: the Fashion-MNIST that Debian's dataset-fashion-mnist installs (`.ci/run`
installs it; elsewhere: apt-get install dataset-fashion-mnist)."""

import os

import pytest

from cnn_jax import data
from cnn_jax.data import sources
from cnn_jax.training import train
from conftest import load_config

FASHION_MNIST = sources.SYSTEM_COPIES['fashion_mnist'][1]
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
  config.progress_bar = False
  result = train.train_and_evaluate(config, str(tmp_path))
  test = result['test']  # The checkpoint chosen on validation (1,000 of the 10,000), tested.
  assert test['count'] == 10_000 and test['accuracy'] > 0.8  # Chance is 10%; ~83% measured.
