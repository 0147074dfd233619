"""Building blocks shared by the models: pooling, dropout, the conv block, activations and kernel
initialisers, and the set of layer constructors a model builds from (`LayerSet`).

The models build from Flax's own layers (`TEXTBOOK`); `cnn_jax.speed` hands them layers that
compute the same numbers faster on some platforms, through the same `LayerSet`.

Activations and initialisers are looked up by the names a config uses; an unknown name is a
`UserError` that lists the allowed ones. Pooling is a module (not a bare function) so that it shows
up in `capture_intermediates` and in `cnn_jax.models.summary`.
"""

import dataclasses
import difflib
from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from cnn_jax.errors import UserError

ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
  'relu': nn.relu,
  'tanh': jnp.tanh,
  'sigmoid': nn.sigmoid,
  'gelu': nn.gelu,
  'elu': nn.elu,
  'leaky_relu': nn.leaky_relu,  # negative slope 0.01, as in PyTorch and Flax
  'swish': nn.swish,
}

# Short names map to the variant that the framework people compare against uses by default:
# Keras layers start from glorot_uniform, torchvision's ResNets from he (kaiming) normal, and
# Flax's own Conv/Dense from lecun_normal. The explicit names pick the other variant.
INITIALIZERS: dict[str, nn.initializers.Initializer] = {
  'xavier': nn.initializers.glorot_uniform(),
  'glorot': nn.initializers.glorot_uniform(),
  'he': nn.initializers.he_normal(),
  'kaiming': nn.initializers.he_normal(),
  'lecun': nn.initializers.lecun_normal(),
  'glorot_uniform': nn.initializers.glorot_uniform(),
  'glorot_normal': nn.initializers.glorot_normal(),
  'he_normal': nn.initializers.he_normal(),
  'he_uniform': nn.initializers.he_uniform(),
  'lecun_normal': nn.initializers.lecun_normal(),
  'lecun_uniform': nn.initializers.lecun_uniform(),
}

POOL_KINDS = ('max', 'avg', 'l2', 'none')

# Added to the sum of squares in l2 pooling: d sqrt(s)/ds = 1 / (2 sqrt(s)) is infinite at s = 0,
# which happens whenever a window is all zeros (common after relu). With the epsilon the gradient
# is finite and the forward value changes by at most sqrt(1e-12) = 1e-6.
L2_POOL_EPS = 1e-12

# The classifier's kernel starts at zero: every class starts equally likely, so the first loss is
# ln(num_classes) (2.30 for 10 classes) and the curve shows learning from the first step. A He or
# Xavier head on top of ReLU features starts with logits of several units and a loss 2-3× higher,
# which the first steps spend undoing. The layers below get gradients from the second step on.
HEAD_INIT = nn.initializers.zeros_init()


def is_static_zero(value: Any) -> bool:
  """True for a plain Python 0 (a setting that is off); False for other numbers and for arrays.

  A population (`cnn_jax.training.population`) passes hyperparameters as traced arrays, one value
  per member; then a layer or loss term (dropout, label smoothing) must be built even where one
  member's value is 0.
  """
  return isinstance(value, (int, float)) and value == 0


def positive_int(field: str, value: Any) -> int:
  """Returns `value` if it is a positive int (a size, stride or width), else raises a UserError.

  Without this check a 0, a negative, a fraction or a word reaches JAX as a shape and fails there
  with a ZeroDivisionError or a TypeError that does not name the setting.
  """
  if isinstance(value, bool) or not isinstance(value, int) or value < 1:
    raise UserError(f'{field}={value!r} must be a positive integer')
  return value


def widths(field: str, value: Any, allow_empty: bool) -> tuple[int, ...]:
  """Returns `value` as a tuple of positive ints (layer widths), else raises a UserError."""
  if isinstance(value, str) or not isinstance(value, Sequence):
    raise UserError(f'{field}={value!r} must be a tuple of positive integers, e.g. (32, 64)')
  if not value and not allow_empty:
    raise UserError(f'{field} is empty; give at least one, e.g. {field}=(32,)')
  for v in value:
    if isinstance(v, bool) or not isinstance(v, int) or v < 1:
      raise UserError(f'{field}={tuple(value)!r} has {v!r}; every entry must be a positive integer')
  return tuple(value)


def choose(kind: str, name: str, allowed: Sequence[str]) -> str:
  """Returns `name` if it is in `allowed`, else raises a UserError that lists the allowed names.

  Args:
    kind: what is being chosen, for the message (e.g. 'activation').
    name: the name the user gave.
    allowed: the accepted names.

  Returns:
    `name`, unchanged.

  Raises:
    UserError: `name` is not in `allowed`; the message suggests the closest match.
  """
  if name in allowed:
    return name
  # Match case-insensitively, so 'same' suggests 'SAME'.
  by_lower = {a.lower(): a for a in allowed}
  close = difflib.get_close_matches(str(name).lower(), list(by_lower), n=1)
  hint = f" (did you mean '{by_lower[close[0]]}'?)" if close else ''
  raise UserError(f"unknown {kind} {name!r}{hint}; choose one of: {', '.join(allowed)}")


def get_activation(name: str) -> Callable[[jax.Array], jax.Array]:
  """Returns the activation function called `name` (one of `ACTIVATIONS`).

  Raises:
    UserError: unknown name.
  """
  return ACTIVATIONS[choose('activation', name, tuple(ACTIVATIONS))]


def get_initializer(name: str) -> nn.initializers.Initializer:
  """Returns the kernel initialiser called `name` (one of `INITIALIZERS`).

  Raises:
    UserError: unknown name.
  """
  return INITIALIZERS[choose('initializer', name, tuple(INITIALIZERS))]


class Pool(nn.Module):
  """2-D spatial pooling over `[B, H, W, C]`.

  Attributes:
    kind: 'max', 'avg', 'l2' (sqrt of the sum of squares over the window, plus `L2_POOL_EPS`
      inside the sqrt so the gradient is finite at 0) or 'none' (identity).
    window: side of the square window.
    stride: step between windows.
    padding: 'VALID', 'SAME' or explicit ((top, bottom), (left, right)) pairs, as for `nn.max_pool`.
      'avg' counts padded zeros in the mean, as `nn.avg_pool` does by default.
  """

  kind: str = 'max'
  window: int = 2
  stride: int = 2
  padding: str | Sequence[tuple[int, int]] = 'VALID'

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    """Pools `x` [B, H, W, C] to [B, Ho, Wo, C]."""
    choose('pool', self.kind, POOL_KINDS)
    if self.kind == 'none':
      return x
    window, strides = (self.window, self.window), (self.stride, self.stride)
    if self.kind == 'max':
      return nn.max_pool(x, window, strides, self.padding)
    if self.kind == 'avg':
      return nn.avg_pool(x, window, strides, self.padding)
    # 'l2': sum of squares over each window; padding contributes zeros.
    # A Python 0 lets JAX see a sum (reduce_window_sum), which it can differentiate under jit; a
    # traced zero array would make a generic window reduction, which it cannot.
    sq = nn.pool(jnp.square(x), 0., jax.lax.add, window, strides, self.padding)
    return jnp.sqrt(sq + L2_POOL_EPS)


class Dropout(nn.Module):
  """`nn.Dropout` (the same random mask for the same key) whose rate may be a traced array.

  A population (`cnn_jax.training.population`) trains models with different dropout rates in one program,
  so the rate arrives as an array inside `vmap`; a member whose rate is 0 keeps every unit.

  Attributes:
    rate: probability of zeroing a unit, a float in [0, 1) or a scalar array.
  """

  rate: float | jax.Array

  @nn.compact
  def __call__(self, x: jax.Array, deterministic: bool) -> jax.Array:
    """Zeroes each unit with probability `rate` and scales the rest by 1 / (1 - rate)."""
    if deterministic or is_static_zero(self.rate):
      return x
    keep_prob = 1.0 - self.rate
    mask = jax.random.bernoulli(self.make_rng('dropout'), p=keep_prob, shape=x.shape)
    return jax.lax.select(mask, x / keep_prob, jnp.zeros_like(x))


def conv_block(x: jax.Array, conv: nn.Module, norm: nn.Module | None,
               activation: Callable[[jax.Array], jax.Array], pool: nn.Module,
               train: bool) -> jax.Array:
  """One conv block in the textbook order: conv ─► (batch norm) ─► activation ─► pool.

  Args:
    x: [B, H, W, C].
    conv: the block's convolution; `norm`: its batch norm, or None; `pool`: its pooling layer.
    activation: applied after the convolution (and batch norm).
    train: batch norm uses the batch's statistics (and updates its averages) instead of them.
  """
  x = conv(x)  # [B, H', W', F]
  if norm is not None:
    x = norm(x, use_running_average=not train)
  x = activation(x)
  return x if pool.kind == 'none' else pool(x)  # [B, H'', W'', F]


@dataclasses.dataclass(frozen=True)
class LayerSet:
  """The layer constructors a model builds from, passed as a module field (as Flax's ImageNet
  example passes `conv` and `norm`): a forked model can swap one without touching the others.

  Attributes:
    conv: a 2-D convolution with `nn.Conv`'s fields and parameters.
    norm: a batch norm with `nn.BatchNorm`'s fields, parameters and variables.
    pool: a pooling layer with `Pool`'s fields.
    block: `conv_block`'s signature and numbers: how one ConvNet block runs its layers.
  """
  conv: Callable[..., nn.Module] = nn.Conv
  norm: Callable[..., nn.Module] = nn.BatchNorm
  pool: Callable[..., nn.Module] = Pool
  block: Callable[..., jax.Array] = conv_block


TEXTBOOK = LayerSet()  # Flax's own layers, in the order the textbook draws them.
