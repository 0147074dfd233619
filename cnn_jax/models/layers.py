"""Building blocks shared by the models: convolution, pooling, batch norm, activations and kernel
initialisers.

Activations and initialisers are looked up by the names a config uses; an unknown name is a
`UserError` that lists the allowed ones. Pooling is a module (not a bare function) so that it shows
up in `capture_intermediates` and in `cnn_jax.models.summary`.
"""

import difflib
import functools
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

# Activations that never decrease: max(f(a), f(b)) = f(max(a, b)), so max pooling may come first.
MONOTONE_ACTIVATIONS = ('relu', 'tanh', 'sigmoid', 'elu', 'leaky_relu')

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


def _window_slices(x: jax.Array, w: int) -> list[jax.Array]:
  """The w² strided views [B, H//w, W//w, C] of `x`, one per position in a w × w window, in
  row-major window order; rows and columns that do not fill a window are dropped (VALID)."""
  ho, wo = x.shape[1] // w, x.shape[2] // w
  return [x[:, i:ho * w:w, j:wo * w:w] for i in range(w) for j in range(w)]


def _crop_to_windows(x: jax.Array, w: int) -> jax.Array:
  """[B, H, W, C] → [B, H//w, w, W//w, w, C]: VALID pooling drops what does not fill a window."""
  b, h, wd, c = x.shape
  ho, wo = h // w, wd // w
  return x[:, :ho * w, :wo * w].reshape(b, ho, w, wo, w, c)


@functools.partial(jax.custom_vjp, nondiff_argnums=(1,))
def _max_pool_valid(x: jax.Array, w: int) -> jax.Array:
  """Non-overlapping VALID max pooling (window == stride == w), with a hand-written gradient.

  XLA:CPU lowers `reduce_window` (what `nn.max_pool` uses) to a slow loop and its gradient to a
  slower select-and-scatter; the gradient JAX derives for reshape + max (which ties windows'
  maxima by counting them) takes several passes. Here the forward pass is reshape + max and the
  gradient one pass over the window's strided slices: the Keras MNIST convnet's train step went
  from about 7,000 to 10,000 images/s on a 2-core CPU.
  """
  return _crop_to_windows(x, w).max(axis=(2, 4))


def _max_pool_forward(x, w):
  y = _max_pool_valid(x, w)
  return y, (x, y)


def _max_pool_backward(w, residuals, g):
  """Routes each window's gradient to its first maximal element in row-major order, as
  PyTorch's MaxPool2d and XLA's select-and-scatter do."""
  x, y = residuals
  b, h, wd, c = x.shape
  ho, wo = y.shape[1:3]
  taken = jnp.zeros(y.shape, bool)
  grads = []
  for part in _window_slices(x, w):
    hit = (part == y) & ~taken
    taken = taken | hit
    grads.append(jnp.where(hit, g, jnp.zeros_like(g)))
  dx = jnp.stack(grads, axis=3).reshape(b, ho, wo, w, w, c)  # [B, Ho, Wo, i, j, C]
  dx = dx.transpose(0, 1, 3, 2, 4, 5).reshape(b, ho * w, wo * w, c)
  return (jnp.pad(dx, ((0, 0), (0, h - ho * w), (0, wd - wo * w), (0, 0))),)


_max_pool_valid.defvjp(_max_pool_forward, _max_pool_backward)


def _pool_valid(x: jax.Array, kind: str, w: int) -> jax.Array:
  """Non-overlapping VALID pooling (window == stride == w) by crop + reshape + reduce.

  Gives exactly the values of `nn.max_pool` / `nn.avg_pool` at a fraction of their cost on CPU.
  """
  if kind == 'max':
    return _max_pool_valid(x, w)
  windows = _crop_to_windows(x, w)
  if kind == 'avg':
    return windows.mean(axis=(2, 4))
  return jnp.sqrt(jnp.sum(jnp.square(windows), axis=(2, 4)) + L2_POOL_EPS)  # 'l2'


class Pool(nn.Module):
  """2-D spatial pooling over `[B, H, W, C]`.

  Attributes:
    kind: 'max', 'avg', 'l2' (sqrt of the sum of squares over the window, plus `L2_POOL_EPS`
      inside the sqrt so the gradient is finite at 0) or 'none' (identity).
    window: side of the square window.
    stride: step between windows.
    padding: 'VALID', 'SAME' or explicit ((top, bottom), (left, right)) pairs, as for `nn.max_pool`.
      'avg' counts padded zeros in the mean, as `nn.avg_pool` does by default.
    by_reshape: non-overlapping VALID pooling (window == stride) by crop + reshape + reduce, max
      pooling with a hand-written gradient (the same values and gradients), instead of XLA's
      reduce_window, which XLA:CPU runs as a slow loop.
  """

  kind: str = 'max'
  window: int = 2
  stride: int = 2
  padding: str | Sequence[tuple[int, int]] = 'VALID'
  by_reshape: bool = True

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    """Pools `x` [B, H, W, C] to [B, Ho, Wo, C]."""
    choose('pool', self.kind, POOL_KINDS)
    if self.kind == 'none':
      return x
    w, s = self.window, self.stride
    if self.by_reshape and w == s and self.padding == 'VALID':
      return _pool_valid(x, self.kind, w)
    window, strides = (w, w), (s, s)
    if self.kind == 'max':
      return nn.max_pool(x, window, strides, self.padding)
    if self.kind == 'avg':
      return nn.avg_pool(x, window, strides, self.padding)
    # 'l2': sum of squares over each window; padding contributes zeros.
    # A Python 0 lets JAX see a sum (reduce_window_sum), which it can differentiate under jit; a
    # traced zero array would make a generic window reduction, which it cannot.
    sq = nn.pool(jnp.square(x), 0., jax.lax.add, window, strides, self.padding)
    return jnp.sqrt(sq + L2_POOL_EPS)


class Conv(nn.Module):
  """A 2-D convolution over [B, H, W, C] with the parameters of `nn.Conv` ('kernel' [k, k, C, F],
  'bias' [F]), whose bias can be left for the caller to add later with `add_bias`.

  Why: in conv ─► activation ─► max pool, adding the per-channel bias and applying a monotone
  activation after the pooling gives the same numbers (max(z + b) = max(z) + b exactly, even in
  floating point, since rounding is monotone) on a tensor the pool made 4× smaller. On a 2-core CPU
  the Keras MNIST convnet trained at 10,400 images/s this way and 4,100 in the textbook order.

  Attributes:
    features: output channels F.
    kernel_size: square kernel side k.
    strides: stride in both directions.
    padding: 'SAME' or 'VALID'.
    use_bias: whether there is a bias.
    dtype: computation dtype (inputs, kernel and bias are cast to it, as `nn.Conv` does).
    param_dtype: parameter dtype.
    kernel_init: kernel initialiser.
    precision: of the convolution, as for `nn.Conv` (None: the platform's default).
  """

  features: int
  kernel_size: int
  strides: int = 1
  padding: str = 'SAME'
  use_bias: bool = True
  dtype: jnp.dtype = jnp.float32
  param_dtype: jnp.dtype = jnp.float32
  kernel_init: nn.initializers.Initializer = nn.initializers.lecun_normal()
  precision: str | None = None

  @nn.compact
  def __call__(self, x: jax.Array, add_bias: bool = True) -> jax.Array:
    """Maps [B, H, W, C] to [B, H', W', F]; with add_bias=False the bias is left out."""
    k = self.kernel_size
    kernel = self.param('kernel', self.kernel_init, (k, k, x.shape[-1], self.features),
                        self.param_dtype)
    if self.use_bias:  # Created here (first call), read back by `add_bias`.
      self.param('bias', nn.initializers.zeros_init(), (self.features,), self.param_dtype)
    x, kernel = nn.dtypes.promote_dtype(x, kernel, dtype=self.dtype)
    y = jax.lax.conv_general_dilated(x, kernel, (self.strides, self.strides), self.padding,
                                     dimension_numbers=('NHWC', 'HWIO', 'NHWC'),
                                     precision=self.precision)
    return self.add_bias(y) if add_bias else y

  def add_bias(self, y: jax.Array) -> jax.Array:
    """Adds this layer's bias (if it has one) to `y` [..., F], of any spatial size."""
    if not self.use_bias:
      return y
    return y + jnp.asarray(self.get_variable('params', 'bias'), self.dtype)


def _channel_sums(x: jax.Array) -> jax.Array:
  """Sums [..., C] over every axis but the last, as a matrix product with a vector of ones."""
  rows = x.reshape(-1, x.shape[-1])
  return jnp.dot(jnp.ones((rows.shape[0],), rows.dtype), rows,
                 precision=jax.lax.Precision.HIGHEST)  # [C], float32 on every platform


def _batch_stats(x: jax.Array) -> tuple[jax.Array, jax.Array]:
  """The per-channel mean and (biased) variance of [..., C], as Flax's fast variance computes them:
  E[x²] − E[x]², clipped at zero."""
  n = x.size // x.shape[-1]
  mean = _channel_sums(x) / n
  return mean, jnp.maximum(_channel_sums(x * x) / n - mean * mean, 0.0)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def _normalize_by_matmul(x, scale, bias, epsilon):
  """(x − mean) / sqrt(var + ε) · scale + bias with the batch's own statistics; returns
  (y, mean, var). The statistics are outputs so the running averages reuse them; they carry no
  gradient (the caller stops it)."""
  return _normalize_forward(x, scale, bias, epsilon)[0]


def _normalize_forward(x, scale, bias, epsilon):
  mean, var = _batch_stats(x)
  inv = jax.lax.rsqrt(var + epsilon)
  return ((x - mean) * (inv * scale) + bias, mean, var), (x, mean, inv, scale)


def _normalize_backward(epsilon, residuals, cotangents):
  # The textbook batch-norm gradient, two sums over the batch instead of autodiff's six passes:
  # dbias = Σg, dscale = Σg·x̂, dx = scale/σ · (g − Σg/n − x̂·Σg·x̂/n).
  del epsilon
  x, mean, inv, scale = residuals
  g = cotangents[0]  # The statistics' cotangents are zero: the caller stops their gradient.
  n = x.size // x.shape[-1]
  x_hat = (x - mean) * inv
  g_sum, g_x_hat_sum = _channel_sums(g), _channel_sums(g * x_hat)
  dx = (scale * inv) * (g - g_sum / n - x_hat * (g_x_hat_sum / n))
  return dx, g_x_hat_sum, g_sum


_normalize_by_matmul.defvjp(_normalize_forward, _normalize_backward)


class MatmulBatchNorm(nn.BatchNorm):
  """`nn.BatchNorm` over the last axis whose training statistics are matrix products: the same
  parameters, running averages and numbers (up to float rounding in training, exactly in
  evaluation), faster on CPU.

  Why: XLA:CPU splits a large reduction (one channel's sum over batch × height × width) into
  reduce-windows that run as slow loops; in the Fashion-MNIST ConvNet the batch-norm sums took
  about a third of a train step. Here the sums are matrix products with a vector of ones (fast
  kernels, float32 accumulation at any `precision`) and the gradient is written out in two sums,
  not autodiff's six passes. (A subclass that overrides the whole call, never calling Flax's:
  a module called twice would show twice in summaries and captured feature maps.)
  """

  @nn.compact
  def __call__(self, x: jax.Array, use_running_average: bool | None = None) -> jax.Array:
    """Normalises [..., C]; in training (use_running_average False) updates the averages."""
    if self.axis not in (-1, x.ndim - 1) or self.axis_name is not None:
      raise ValueError('MatmulBatchNorm normalises the last axis, within one program')
    channels = (x.shape[-1],)
    ra_mean = self.variable('batch_stats', 'mean', lambda s: jnp.zeros(s, jnp.float32), channels)
    ra_var = self.variable('batch_stats', 'var', lambda s: jnp.ones(s, jnp.float32), channels)
    scale = (self.param('scale', self.scale_init, channels, self.param_dtype)
             if self.use_scale else jnp.ones(channels))
    bias = (self.param('bias', self.bias_init, channels, self.param_dtype)
            if self.use_bias else jnp.zeros(channels))
    wide = jnp.promote_types(x.dtype, jnp.float32)  # Statistics in float32 at least, as Flax's.
    if nn.merge_param('use_running_average', self.use_running_average, use_running_average):
      # Flax's own operations, in its order, so evaluation gives its numbers bit for bit.
      y = (x - ra_mean.value) * (jax.lax.rsqrt(ra_var.value + self.epsilon) * scale) + bias
      return y.astype(self.dtype or wide)
    y, mean, var = _normalize_by_matmul(x.astype(wide), jnp.asarray(scale, wide),
                                        jnp.asarray(bias, wide), self.epsilon)
    mean, var = jax.lax.stop_gradient(mean), jax.lax.stop_gradient(var)
    if not self.is_initializing():
      ra_mean.value = self.momentum * ra_mean.value + (1 - self.momentum) * mean
      ra_var.value = self.momentum * ra_var.value + (1 - self.momentum) * var
    return y.astype(self.dtype or wide)


def batch_norm_class(by_matmul: bool) -> type[nn.BatchNorm]:
  """The batch-norm module a model uses: `MatmulBatchNorm`, or Flax's own."""
  return MatmulBatchNorm if by_matmul else nn.BatchNorm


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
