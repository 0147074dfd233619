"""How many filters, and how large? The single-conv network of the introductory Keras article on
the offline digits, swept over filter count and kernel size.

    python -m cnn_jax.sweep --config experiments/sweeps/single_conv_digits.py \\
        --workdir runs/single_conv_sweep

Conv2D(F filters, K×K, valid, relu) → MaxPool 2×2 → Dense(10), Adam 1e-3, 40 epochs of batch 64.
Results measured on a 2-core CPU are in experiments/README.md.
"""

import ml_collections

from cnn_jax.configs import digits


def get_config():
  """The digits setup with the article's single-conv network."""
  config = digits.get_config()
  config.model = ml_collections.ConfigDict({'name': 'single_conv', 'features': (8,),
                                            'kernel_size': 3})
  config.optimizer.learning_rate = 1e-3
  config.optimizer.schedule = 'constant'
  config.num_epochs = 40.0
  config.eval_every_steps = 220
  return config


def get_sweep():
  """Filters per layer × filter size: 5 × 2 = 10 trials."""
  return ['model.features=[2,4,8,16,32]', 'model.kernel_size=[3,5]']
