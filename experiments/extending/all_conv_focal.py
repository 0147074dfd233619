"""Changing the model and the loss from outside the package: this config file defines both,
registers them, and trains the offline digits with them.

    cnn-jax train --config experiments/extending/all_conv_focal.py --workdir runs/all_conv_focal

The model is an "all convolutional" net (Springenberg et al. 2015): strided convolutions where
pooling would be, and a 1×1 convolution to the classes averaged over the image where dense
layers would be. The loss is the focal loss (Lin et al. 2017): cross-entropy scaled by
(1 − p)^γ, p the probability given to the true class, so examples already learnt count less.
Nothing under cnn_jax/ changes: `models.register` and `losses.register` add them to the
registries that `config.model.name` and `config.loss` look up. Measured on a 2-core CPU
(tests/test_extending.py runs a shorter version): see experiments/README.md.
"""

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from cnn_jax import models
from cnn_jax.configs import default
from cnn_jax.models import layers
from cnn_jax.training import losses


class AllConvNet(nn.Module):
  """conv 3×3 stride 2 ─► relu, once per entry of `features`, then a 1×1 conv to the classes,
  averaged over space: [B, H, W, C] ─► [B, num_classes].

  Attributes:
    num_classes: number of logits.
    features: filters of each strided conv (each halves the image's side, SAME padding).
    dtype: computation dtype (cnn_jax passes config.dtype).
    layer_set: the layers it builds from; cnn_jax passes faster equals on CPU (`cnn_jax.speed`).
  """
  num_classes: int
  features: Sequence[int] = (32, 64)
  dtype: Any = jnp.float32
  layer_set: layers.LayerSet = layers.TEXTBOOK

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    del train  # No dropout or batch norm here.
    x = x.astype(self.dtype)
    for i, width in enumerate(self.features):
      x = nn.relu(self.layer_set.conv(width, (3, 3), (2, 2), 'SAME', dtype=self.dtype,
                                      name=f'conv_{i}')(x))  # [B, H/2, W/2, width]
    x = self.layer_set.conv(self.num_classes, (1, 1), dtype=self.dtype, name='head')(x)
    return jnp.mean(x, axis=(1, 2)).astype(jnp.float32)  # [B, num_classes]


def focal_loss(logits: jax.Array, labels: jax.Array, label_smoothing=0.0,
               gamma: float = 2.0) -> jax.Array:
  """Per-example focal loss [B]: −(1 − p)^γ · log p, p the softmax probability of the label;
  γ = 0 is cross-entropy. Label smoothing is cross-entropy's idea, not focal loss's: refused."""
  if not layers.is_static_zero(label_smoothing):
    raise ValueError('focal_loss takes no label smoothing; leave config.label_smoothing at 0')
  log_p = jnp.take_along_axis(jax.nn.log_softmax(logits), labels[:, None], axis=-1)[:, 0]
  return -((1.0 - jnp.exp(log_p)) ** gamma) * log_p


models.register('all_conv', AllConvNet)
losses.register('focal', focal_loss)


def get_config(arg: str | None = None):
  """The digits default with the model and the loss above."""
  config = default.get_config()
  config.model = ml_collections.ConfigDict({'name': 'all_conv', 'features': (32, 64)})
  config.loss = 'focal'
  config.optimizer.learning_rate = 3e-3
  config.num_epochs = 30.0
  return default.variant(config, arg, small={'num_epochs': 3.0, 'log_every_steps': 5})
