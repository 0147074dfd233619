"""Layers that compute what the textbook layers of `cnn_jax.models.layers` compute, faster on CPU.

Each one keeps the parameters, variables and module names of the layer it replaces, so a
checkpoint, a summary or a captured feature map does not tell them apart, and each has an
equality test against its textbook layer (values, gradients, running averages) in
tests/test_speed.py. A model never names them: `cnn_jax.speed.Speed.layer_set` hands them to it
through its `layer_set` field.

- `ReshapePool`: non-overlapping pooling by crop + reshape + reduce, max pooling with a
  hand-written gradient, instead of XLA's `reduce_window` (a slow loop on XLA:CPU).
- `MatmulBatchNorm`: batch norm's per-channel sums as matrix products with a vector of ones.
- `SplitBiasConv` + `pool_first_block`: in training, conv ─► max pool ─► bias ─► activation,
  the textbook block's numbers on a tensor the pool made 4× smaller.
"""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp

from cnn_jax.models import layers


# ---- pooling by reshape ----------------------------------------------------------------------

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


class ReshapePool(layers.Pool):
  """`layers.Pool` whose non-overlapping VALID windows (window == stride) pool by crop + reshape
  + reduce: exactly its values and gradients, at a fraction of `reduce_window`'s cost on CPU.
  Other windows pool as `layers.Pool` does."""

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    """Pools `x` [B, H, W, C] to [B, Ho, Wo, C]."""
    w = self.window
    if self.kind == 'none' or w != self.stride or self.padding != 'VALID':
      return super().__call__(x)
    if self.kind == 'max':
      return _max_pool_valid(x, w)
    windows = _crop_to_windows(x, w)
    if self.kind == 'avg':
      return windows.mean(axis=(2, 4))
    return jnp.sqrt(jnp.sum(jnp.square(windows), axis=(2, 4)) + layers.L2_POOL_EPS)  # 'l2'


# ---- a conv whose bias can wait, and the block that pools first ------------------------------

class SplitBiasConv(nn.Conv):
  """`nn.Conv` (its parameters 'kernel' [k, k, C, F] and 'bias' [F], its numbers) whose bias can
  be left for the caller to add later with `add_bias`: `pool_first_block` adds it after pooling.
  Square kernels and 2-D images, as the ConvNet builds them."""

  @nn.compact
  def __call__(self, x: jax.Array, add_bias: bool = True) -> jax.Array:
    """Maps [B, H, W, C] to [B, H', W', F]; with add_bias=False the bias is left out."""
    kernel = self.param('kernel', self.kernel_init, (*self.kernel_size, x.shape[-1],
                                                     self.features), self.param_dtype)
    if self.use_bias:  # Created here (first call), read back by `add_bias`.
      self.param('bias', self.bias_init, (self.features,), self.param_dtype)
    x, kernel = nn.dtypes.promote_dtype(x, kernel, dtype=self.dtype)
    strides = self.strides if isinstance(self.strides, tuple) else (self.strides,) * 2
    y = jax.lax.conv_general_dilated(x, kernel, strides, self.padding,
                                     dimension_numbers=('NHWC', 'HWIO', 'NHWC'),
                                     precision=self.precision)
    return self.add_bias(y) if add_bias else y

  def add_bias(self, y: jax.Array) -> jax.Array:
    """Adds this layer's bias (if it has one) to `y` [..., F], of any spatial size."""
    if not self.use_bias:
      return y
    return y + jnp.asarray(self.get_variable('params', 'bias'), self.dtype)


# Activations that never decrease: max(f(a), f(b)) = f(max(a, b)), so max pooling may come first.
_MONOTONE = tuple(layers.ACTIVATIONS[name]
                  for name in ('relu', 'tanh', 'sigmoid', 'elu', 'leaky_relu'))


def pool_first_block(x: jax.Array, conv: nn.Module, norm: nn.Module | None, activation,
                     pool: nn.Module, train: bool) -> jax.Array:
  """`layers.conv_block`'s numbers; in training, with max pooling after a monotone activation
  and a `SplitBiasConv`, computed as conv ─► (batch norm) ─► max pool ─► bias ─► activation.

  Max pooling commutes with adding a per-channel bias and with a monotone activation
  (max(z + b) = max(z) + b exactly, even in floating point, since rounding is monotone), so the
  bias and the activation run on a tensor the pool made 4× smaller: on a 2-core CPU the Keras
  MNIST convnet trained at 10,400 images/s this way and 4,100 in the textbook order. Evaluation
  keeps the textbook order, so captured feature maps are each layer's true output.
  """
  if not (train and isinstance(conv, SplitBiasConv) and pool.kind == 'max'
          and any(activation is f for f in _MONOTONE)):
    return layers.conv_block(x, conv, norm, activation, pool, train)
  x = conv(x, add_bias=False)  # [B, H', W', F]
  if norm is not None:
    x = norm(x, use_running_average=False)
  return activation(conv.add_bias(pool(x)))


# ---- batch norm by matrix products -----------------------------------------------------------

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
