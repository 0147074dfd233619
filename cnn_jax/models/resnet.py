"""A ResNet with basic (two 3×3 conv) residual blocks, as in He et al. 2015 and torchvision.

  stem ─► stage 1 ─► stage 2 ─► ... ─► global average pool ─► dense(num_classes)

Stage i has `stage_sizes[i]` blocks of `num_filters · 2**i` channels; its first block downsamples
by 2 (except in stage 1) and, where the shape changes, the shortcut is a 1×1 conv + BN projection.
`RESNET18` has 11,689,512 parameters for 224×224×3 and 1000 classes, torchvision's figure.
"""

import functools
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from cnn_jax.models import layers
from cnn_jax.models.convnet import BN_EPSILON, BN_MOMENTUM

STEMS = ('imagenet', 'small')


class ResidualBlock(nn.Module):
  """Basic block: conv3×3 ─► BN ─► relu ─► conv3×3 ─► BN, plus the shortcut, then relu.

  Attributes:
    filters: output channels.
    strides: stride of the first conv (and of the projection shortcut).
    initializer: kernel initialiser name (see `layers.INITIALIZERS`).
    dtype: computation dtype.
    precision: of the convolutions (None: the platform's default).
    layer_set: the conv and batch norm layers it builds from (see `layers.LayerSet`).
  """

  filters: int
  strides: int = 1
  initializer: str = 'he'
  dtype: Any = jnp.float32
  precision: str | None = None
  layer_set: layers.LayerSet = layers.TEXTBOOK

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    """Maps [B, H, W, C] to [B, H/strides, W/strides, filters]."""
    conv = functools.partial(self.layer_set.conv, use_bias=False, dtype=self.dtype,
                             param_dtype=jnp.float32,
                             kernel_init=layers.get_initializer(self.initializer),
                             precision=self.precision)
    norm = functools.partial(self.layer_set.norm, use_running_average=not train,
                             momentum=BN_MOMENTUM, epsilon=BN_EPSILON, dtype=self.dtype,
                             param_dtype=jnp.float32)
    s = (self.strides, self.strides)
    y = conv(self.filters, (3, 3), s, padding=((1, 1), (1, 1)), name='conv_0')(x)
    y = nn.relu(norm(name='bn_0')(y))
    y = conv(self.filters, (3, 3), padding=((1, 1), (1, 1)), name='conv_1')(y)
    # Zero-initialising the last BN scale makes each block start as the identity, which trains
    # faster and more stably from scratch (Goyal et al. 2017); the parameter count is unchanged.
    y = norm(scale_init=nn.initializers.zeros, name='bn_1')(y)  # [B, H/s, W/s, filters]
    if x.shape != y.shape:
      x = conv(self.filters, (1, 1), s, padding='VALID', name='proj_conv')(x)
      x = norm(name='proj_bn')(x)
    return nn.relu(x + y)


class ResNet(nn.Module):
  """ResNet with basic blocks; maps images to logits.

  Attributes:
    num_classes: number of logits.
    stage_sizes: number of residual blocks in each stage.
    num_filters: channels of the stem and the first stage; each later stage doubles them.
    stem: 'imagenet' (7×7/2 conv + 3×3/2 max pool; for 128–224 px images) or 'small' (3×3/1 conv,
      no pool; for 32–64 px images, which the ImageNet stem would shrink 4× too early).
    initializer: kernel initialiser of every Conv, one of `layers.INITIALIZERS`; the classifier
      starts at zero (`layers.HEAD_INIT`).
    dtype: computation dtype; parameters stay float32 and logits are returned as float32.
    precision: of the convolutions and the classifier (None: the platform's default; 'high',
      'highest').
    layer_set: the conv, batch norm and pooling layers it builds from (see `layers.LayerSet`).
  """

  num_classes: int
  stage_sizes: Sequence[int] = (2, 2, 2, 2)
  num_filters: int = 64
  stem: str = 'imagenet'
  initializer: str = 'he'
  dtype: Any = jnp.float32
  precision: str | None = None
  layer_set: layers.LayerSet = layers.TEXTBOOK

  def __post_init__(self):
    # Check at construction, so a bad config fails in `create_model`, before any data is loaded.
    super().__post_init__()
    layers.choose('stem', self.stem, STEMS)
    layers.get_initializer(self.initializer)
    layers.widths('stage_sizes', self.stage_sizes, allow_empty=False)
    layers.positive_int('num_filters', self.num_filters)

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    """Maps images [B, H, W, C] to float32 logits [B, num_classes].

    Args:
      x: float images, [B, H, W, C].
      train: updates the batch statistics (mutable 'batch_stats') instead of using them.
    """
    ops = self.layer_set
    conv = functools.partial(ops.conv, self.num_filters, use_bias=False, dtype=self.dtype,
                             param_dtype=jnp.float32,
                             kernel_init=layers.get_initializer(self.initializer),
                             precision=self.precision, name='stem_conv')
    x = x.astype(self.dtype)
    if self.stem == 'imagenet':
      x = conv((7, 7), (2, 2), padding=((3, 3), (3, 3)))(x)  # [B, H/2, W/2, F]
    else:
      x = conv((3, 3), padding=((1, 1), (1, 1)))(x)  # [B, H, W, F]
    x = ops.norm(use_running_average=not train, momentum=BN_MOMENTUM, epsilon=BN_EPSILON,
                 dtype=self.dtype, param_dtype=jnp.float32, name='stem_bn')(x)
    x = nn.relu(x)
    if self.stem == 'imagenet':
      # Pads by 1 on every side like torchvision (SAME would pad only bottom/right).
      x = ops.pool('max', 3, 2, padding=((1, 1), (1, 1)), name='stem_pool')(x)
      # [B, H/4, W/4, F]
    for i, size in enumerate(self.stage_sizes):
      for j in range(size):
        strides = 2 if i > 0 and j == 0 else 1
        x = ResidualBlock(self.num_filters * 2**i, strides, self.initializer, self.dtype,
                          self.precision, ops, name=f'stage{i + 1}_block{j}')(x, train)
    x = jnp.mean(x, axis=(1, 2))  # [B, C] global average pool
    x = nn.Dense(self.num_classes, dtype=self.dtype, param_dtype=jnp.float32,
                 kernel_init=layers.HEAD_INIT, precision=self.precision, name='head')(x)
    return x.astype(jnp.float32)  # [B, num_classes]


RESNET18 = functools.partial(ResNet, stage_sizes=(2, 2, 2, 2))
RESNET10 = functools.partial(ResNet, stage_sizes=(1, 1, 1, 1))
# ~0.3 M parameters; 64 px ─► 64, 32, 16, 8 px feature maps with 16, 32, 64, 128 channels.
RESNET_SMALL = functools.partial(ResNet, stage_sizes=(1, 1, 1, 1), num_filters=16, stem='small')
