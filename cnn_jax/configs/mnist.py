"""The Keras MNIST convnet on MNIST (TFDS 'mnist', 60k train / 10k test, 28×28×1).

    python -m cnn_jax.main --config mnist --workdir runs/mnist
    python -m cnn_jax.main --config mnist:small --workdir runs/mnist_small  # a quick try

conv32 3×3 → max pool → conv64 3×3 → max pool → dropout 0.5 → dense 10: 34,826 parameters.
The dataset is prepared by TFDS on first use (needs internet, or see README "Offline machines").
Accuracy and time: not yet measured by this project (the development machine cannot download MNIST).
"""

import ml_collections

from cnn_jax.configs import default


def get_config(arg: str | None = None):
  """Returns the MNIST config; `:small` trains 2% of the data for a quick end-to-end check."""
  config = default.get_config()
  config.data.name = 'mnist'
  config.model = ml_collections.ConfigDict({'name': 'keras_mnist'})
  config.optimizer.name = 'adam'
  config.optimizer.learning_rate = 1e-3
  config.batch_size = 128
  config.num_epochs = 15.0  # The Keras example's length.
  config.log_every_steps = 100
  return default.variant(config, arg, small=default.SMALL_SPLITS)
