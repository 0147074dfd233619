"""A configurable plain ConvNet, and the named classic networks built from it.

One conv block per entry of `features`:

  conv ─► [batch norm] ─► activation ─► pool ─► [dropout]

then flatten ─► ([dropout] ─► dense ─► activation)* ─► [dropout] ─► dense(num_classes).

Per-block options (kernel size, stride, padding, pooling) take either one value for every block or
a sequence with one value per block. The classic networks (`KERAS_MNIST`, `SINGLE_CONV`, `LENET5`,
`TINY`) are `functools.partial`s of `ConvNet`, so any field can still be overridden by name.
"""

import functools
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from cnn_jax.errors import UserError
from cnn_jax.models import layers

PADDINGS = ('SAME', 'VALID')
# BatchNorm settings of PyTorch (its momentum 0.1 is 0.9 here) and of the Flax ImageNet example.
BN_MOMENTUM = 0.9
BN_EPSILON = 1e-5


def per_block(field: str, value: Any, num_blocks: int) -> tuple[Any, ...]:
  """Broadcasts a scalar field to one value per block, or checks a sequence has one per block.

  Args:
    field: the field's name, for the error message.
    value: a scalar (int or str) or a sequence of them.
    num_blocks: the number of conv blocks (`len(features)`).

  Returns:
    A tuple of `num_blocks` values.

  Raises:
    UserError: `value` is a sequence of the wrong length.
  """
  if isinstance(value, str) or not isinstance(value, Sequence):
    return (value,) * num_blocks
  value = tuple(value)
  if len(value) != num_blocks:
    raise UserError(
      f'{field} has {len(value)} entries {value} but features has {num_blocks}; give one value '
      f'for every block, or a single value for all of them'
    )
  return value


def block_settings(net: 'ConvNet') -> list[dict[str, Any]]:
  """Returns the settings of each conv block of `net`, one dict per block, broadcast and checked.

  Raises:
    UserError: no block, a size that is not a positive int, a per-block sequence of the wrong
      length, or an unknown padding or pool kind.
  """
  n = len(layers.widths('features', net.features, allow_empty=False))
  fields = ('kernel_size', 'strides', 'padding', 'pool', 'pool_window', 'pool_stride')
  columns = {f: per_block(f, getattr(net, f), n) for f in fields}
  for f in ('kernel_size', 'strides', 'pool_window', 'pool_stride'):
    for size in columns[f]:
      layers.positive_int(f, size)
  for p in columns['padding']:
    layers.choose('padding', p, PADDINGS)
  for p in columns['pool']:
    layers.choose('pool', p, layers.POOL_KINDS)
  return [{f: columns[f][i] for f in fields} for i in range(n)]


class ConvNet(nn.Module):
  """A plain stack of conv blocks followed by dense layers; maps images to logits.

  Submodules are named `conv_{i}`, `bn_{i}`, `pool_{i}`, `conv_dropout_{i}` for conv block i,
  `dense_dropout_{j}`, `dense_{j}` for hidden dense layer j, and `head_dropout`, `head` for the
  classifier, so summaries and captured feature maps read naturally.

  Attributes:
    num_classes: number of logits.
    features: output channels of each conv block; one block per entry.
    kernel_size: square kernel side, per block or for all.
    strides: conv stride, per block or for all.
    padding: 'SAME' or 'VALID', per block or for all.
    activation: one of `layers.ACTIVATIONS`.
    pool: 'max', 'avg', 'l2' or 'none', per block or for all.
    pool_window: pooling window side, per block or for all.
    pool_stride: pooling stride, per block or for all.
    batch_norm: conv ─► BatchNorm ─► activation (and the conv drops its now redundant bias).
    conv_dropout: dropout rate after each conv block.
    dense: widths of the hidden dense layers before the classifier.
    dense_dropout: dropout rate before each dense layer, the classifier included.
    initializer: kernel initialiser of every Conv and hidden Dense, one of `layers.INITIALIZERS`
      (not called `init`, which would shadow `Module.init`); the classifier starts at zero
      (`layers.HEAD_INIT`).
    use_bias: whether Conv (without batch norm) and Dense layers have a bias.
    precision: of the convolutions and dense layers (None: the platform's default; 'high',
      'highest').
    dtype: computation dtype; parameters stay float32 and logits are returned as float32.
    layer_set: the conv, batch norm and pooling layers and the block order it builds from:
      Flax's own by default; `cnn_jax.speed` supplies faster ones with the same numbers.
  """

  num_classes: int
  features: Sequence[int] = (32, 64)
  kernel_size: int | Sequence[int] = 3
  strides: int | Sequence[int] = 1
  padding: str | Sequence[str] = 'SAME'
  activation: str = 'relu'
  pool: str | Sequence[str] = 'max'
  pool_window: int | Sequence[int] = 2
  pool_stride: int | Sequence[int] = 2
  batch_norm: bool = False
  conv_dropout: float = 0.0
  dense: Sequence[int] = ()
  dense_dropout: float = 0.0
  initializer: str = 'he'
  use_bias: bool = True
  precision: str | None = None
  dtype: Any = jnp.float32
  layer_set: layers.LayerSet = layers.TEXTBOOK

  def __post_init__(self):
    # Check at construction, so a bad config fails in `create_model`, before any data is loaded.
    super().__post_init__()
    block_settings(self)
    layers.widths('dense', self.dense, allow_empty=True)
    layers.get_activation(self.activation)
    layers.get_initializer(self.initializer)
    for field in ('conv_dropout', 'dense_dropout'):
      rate = getattr(self, field)
      if isinstance(rate, (int, float)) and not 0.0 <= rate < 1.0:  # (A population's is an array.)
        raise UserError(f'{field} must be in [0, 1), got {rate}')

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    """Maps images [B, H, W, C] to float32 logits [B, num_classes].

    Args:
      x: float images, [B, H, W, C].
      train: enables dropout (rng stream 'dropout') and batch-statistics updates.
    """
    act = layers.get_activation(self.activation)
    kernel_init = layers.get_initializer(self.initializer)
    common = dict(dtype=self.dtype, param_dtype=jnp.float32, kernel_init=kernel_init,
                  precision=self.precision)
    x = x.astype(self.dtype)
    ops = self.layer_set
    for i, (width, b) in enumerate(zip(self.features, block_settings(self))):
      k, s = b['kernel_size'], b['strides']
      # With batch norm a conv bias is redundant: BN subtracts the mean and adds its own bias.
      conv = ops.conv(width, (k, k), (s, s), b['padding'],
                      use_bias=self.use_bias and not self.batch_norm, name=f'conv_{i}', **common)
      norm = ops.norm(momentum=BN_MOMENTUM, epsilon=BN_EPSILON, dtype=self.dtype,
                      param_dtype=jnp.float32, name=f'bn_{i}') if self.batch_norm else None
      pool = ops.pool(b['pool'], b['pool_window'], b['pool_stride'], name=f'pool_{i}')
      # conv ─► (batch norm) ─► activation ─► pool: [B, H, W, C] ─► [B, H', W', width]
      x = ops.block(x, conv, norm, act, pool, train)
      if not layers.is_static_zero(self.conv_dropout):
        x = layers.Dropout(self.conv_dropout, name=f'conv_dropout_{i}')(x, not train)
    x = x.reshape((x.shape[0], -1))  # [B, H'·W'·C']
    for j, width in enumerate(self.dense):
      if not layers.is_static_zero(self.dense_dropout):
        x = layers.Dropout(self.dense_dropout, name=f'dense_dropout_{j}')(x, not train)
      x = act(nn.Dense(width, use_bias=self.use_bias, name=f'dense_{j}', **common)(x))
    if not layers.is_static_zero(self.dense_dropout):
      x = layers.Dropout(self.dense_dropout, name='head_dropout')(x, not train)
    head = dict(common, kernel_init=layers.HEAD_INIT)
    x = nn.Dense(self.num_classes, use_bias=self.use_bias, name='head', **head)(x)
    return x.astype(jnp.float32)  # [B, num_classes]


# The Keras "Simple MNIST convnet" example: 34,826 parameters for 28×28×1 and 10 classes.
# 28 ─conv3 VALID─► 26 ─pool─► 13 ─conv3 VALID─► 11 ─pool─► 5; 5·5·64 = 1,600 features.
KERAS_MNIST = functools.partial(
  ConvNet, features=(32, 64), kernel_size=3, padding='VALID', pool='max', dense=(),
  dense_dropout=0.5, initializer='xavier',
)

# The introductory Keras article's network: one Conv2D(relu, VALID, stride 1), MaxPool 2×2, Dense.
# With 300×300×3 input and 2 classes: 10·(5·5·3+1) + 2·(148·148·10) + 2 = 438,842 parameters.
SINGLE_CONV = functools.partial(
  ConvNet, features=(10,), kernel_size=5, padding='VALID', pool='max', dense=(),
  initializer='xavier',
)

# LeNet-5 for 28×28 input (the first conv pads to SAME, standing in for the original 32×32 input):
# 28 ─conv5 SAME─► 28 ─avg─► 14 ─conv5 VALID─► 10 ─avg─► 5; 61,706 parameters for 10 classes.
LENET5 = functools.partial(
  ConvNet, features=(6, 16), kernel_size=5, padding=('SAME', 'VALID'), pool='avg',
  dense=(120, 84), activation='tanh', initializer='xavier',
)

# A minimal model for tests: 4 filters 3×3 ─► max pool ─► classifier.
TINY = functools.partial(ConvNet, features=(4,), kernel_size=3, pool='max', dense=())
