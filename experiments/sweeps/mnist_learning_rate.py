"""Which learning rate? The Keras MNIST convnet on MNIST, Adam, learning rate on a log scale.

    python -m cnn_jax.sweep --config experiments/sweeps/mnist_learning_rate.py \\
        --workdir runs/mnist_lr_sweep --workers 2

Needs MNIST prepared by TFDS (README "Offline machines"). Not yet measured by this project: the
development machine cannot download MNIST.
"""

from cnn_jax.configs import mnist


def get_config():
  """The MNIST config, 3 epochs per trial."""
  config = mnist.get_config()
  config.num_epochs = 3.0
  return config


def get_sweep():
  """Five learning rates, a factor of ~3 apart."""
  return ['optimizer.learning_rate=[3e-4,1e-3,3e-3,1e-2,3e-2]']
