"""What a trained network looks at and looks for: Grad-CAM maps, the image patches that excite
each first-layer filter most, and one feature map pooled the three ways a CNN pools.

Grad-CAM (Selvaraju et al. 2017) weights the channels of a late convolutional layer by the
gradient of a class's logit with respect to them, averaged over the map: where those weighted
channels are positive is where the evidence for the class lies. The maps are computed for any
model, by intercepting the chosen layer's output (`flax.linen.intercept_methods`), so no model
needs a hook of its own.
"""

import dataclasses
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from cnn_jax.models import layers
from cnn_jax.models.resnet import ResidualBlock
from cnn_jax.models.summary import LayerRow

# Grad-CAM reads the deepest feature maps that are at least this many pixels on a side: deeper
# layers know more about the class, but a 2×2 map says little about where.
MIN_CAM_SIDE = 4


@dataclasses.dataclass(frozen=True)
class CamTarget:
  """The feature maps Grad-CAM reads: a module's input or output, after the block's activation.

  Attributes:
    path: the module's path, e.g. 'pool_1' or 'stage4_block1'.
    on_input: read the module's input (a pooling layer's: its block's activated output), else
      its output (a residual block's, activated).
    shape: one image's maps, [h, w, C].
  """
  path: str
  on_input: bool
  shape: tuple

  @property
  def description(self) -> str:
    return f'the input of {self.path}' if self.on_input else f'the output of {self.path}'


def cam_target(model, variables, image_shape: tuple) -> CamTarget:
  """The deepest activated feature maps of at least MIN_CAM_SIDE pixels a side (else the
  largest): a ConvNet block's (a pooling layer's input), or a residual block's output; the last
  convolution's output for a model with neither."""
  found, convolutions = [], []

  def record(next_fun, args, kwargs, context):
    out = next_fun(*args, **kwargs)
    if context.method_name == '__call__':
      path, module = '/'.join(context.module.path), context.module
      # By class, not name: the speed layer's faster equals (cnn_jax.speed) are subclasses.
      if isinstance(module, layers.Pool):
        found.append(CamTarget(path, True, tuple(args[0].shape[1:])))
      elif isinstance(module, ResidualBlock):
        found.append(CamTarget(path, False, tuple(out.shape[1:])))
      elif isinstance(module, nn.Conv):
        convolutions.append(CamTarget(path, False, tuple(out.shape[1:])))
    return out

  with nn.intercept_methods(record):
    jax.eval_shape(lambda x: model.apply(variables, x, train=False),
                   jax.ShapeDtypeStruct((1, *image_shape), jnp.float32))
  candidates = found or convolutions[-1:]
  large = [t for t in candidates if min(t.shape[:2]) >= MIN_CAM_SIDE]
  return large[-1] if large else max(candidates, key=lambda t: t.shape[0] * t.shape[1])


def _perturbing(target: CamTarget, delta):
  """An interceptor that sows the target maps and adds `delta` to them, so that both their value
  and the gradient of the logits with respect to them can be read."""
  def intercept(next_fun, args, kwargs, context):
    if context.method_name != '__call__' or '/'.join(context.module.path) != target.path:
      return next_fun(*args, **kwargs)
    if target.on_input:
      context.module.sow('intermediates', 'cam_target', args[0])
      return next_fun(args[0] + delta, *args[1:], **kwargs)
    out = next_fun(*args, **kwargs)
    context.module.sow('intermediates', 'cam_target', out)
    return out + delta
  return intercept


def grad_cam(model, variables, images: np.ndarray, classes: np.ndarray, target: CamTarget,
             batch_size: int = 64) -> np.ndarray:
  """Grad-CAM maps [N, H, W] in [0, 1] of normalised `images` [N, H, W, C] for `classes` [N].

  Each map is ReLU(Σ_k α_k A_k) over the channels A_k of `target`, with α_k the mean gradient
  of the class's logit over A_k, resized (bilinear) to the image and divided by its maximum (an
  all-zero map stays zero: nothing in the image speaks for the class at that layer).
  """
  height, width = images.shape[1:3]

  def maps(batch, batch_classes):
    def score(delta):
      with nn.intercept_methods(_perturbing(target, delta)):
        logits, state = model.apply(variables, batch, train=False, mutable=['intermediates'])
      activations = jax.tree.leaves(state['intermediates'])[0]  # [B, h, w, C]
      chosen = jnp.take_along_axis(logits, batch_classes[:, None], axis=1)
      return chosen.sum(), activations

    delta = jnp.zeros((batch.shape[0], *target.shape), batch.dtype)
    gradients, activations = jax.grad(score, has_aux=True)(delta)
    weights = gradients.mean(axis=(1, 2), keepdims=True)  # α: [B, 1, 1, C]
    cam = jax.nn.relu((weights * activations).sum(-1))  # [B, h, w]
    cam = jax.image.resize(cam, (cam.shape[0], height, width), 'bilinear')
    peak = cam.max(axis=(1, 2), keepdims=True)
    return jnp.where(peak > 0, cam / jnp.where(peak > 0, peak, 1), 0)

  compiled = jax.jit(maps)
  out = [np.asarray(compiled(jnp.asarray(images[i:i + batch_size], jnp.float32),
                             jnp.asarray(classes[i:i + batch_size], jnp.int32)))
         for i in range(0, len(images), batch_size)]
  return np.concatenate(out) if out else np.zeros((0, height, width), np.float32)


def layer_outputs(model, variables, images: np.ndarray, layer: str,
                  batch_size: int = 256) -> np.ndarray:
  """The outputs [N, h, w, C] of the module at path `layer` for normalised `images`."""
  wanted = lambda module, method: method == '__call__' and '/'.join(module.path) == layer

  @jax.jit
  def capture(batch):
    _, state = model.apply(variables, batch, train=False, capture_intermediates=wanted,
                           mutable=['intermediates'])
    return jax.tree.leaves(state['intermediates'])[0]

  return np.concatenate([np.asarray(capture(jnp.asarray(images[i:i + batch_size], jnp.float32)))
                         for i in range(0, len(images), batch_size)])


def strongest_patches(raw_images: np.ndarray, outputs: np.ndarray, layer: LayerRow,
                      count: int = 1) -> np.ndarray:
  """For each filter of a first conv layer, the `count` input patches [F, count, k, k, C] that
  excite it most: where its output (`outputs` [N, h, w, F] of `raw_images`' normalised copies)
  is highest, the k×k window of the raw image it saw there (zeros where it saw padding)."""
  k, stride = layer.kernel, layer.stride
  top = int(math.floor(layer.padding or 0))
  pad = k  # Enough on every side for any window that overlaps the image.
  padded = np.pad(raw_images, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
  _, h, w, filters = outputs.shape
  patches = np.zeros((filters, count, k, k, raw_images.shape[-1]), raw_images.dtype)
  for f in range(filters):
    strongest = np.argsort(outputs[..., f].ravel())[::-1][:count]
    for j, flat in enumerate(strongest):
      n, y, x = np.unravel_index(flat, (len(outputs), h, w))
      row, column = y * stride - top + pad, x * stride - top + pad
      patches[f, j] = padded[n, row:row + k, column:column + k]
  return patches


def pooled_three_ways(feature_map: np.ndarray, window: int = 2) -> dict[str, np.ndarray]:
  """One feature map [H, W] pooled window×window with stride `window`, the three ways:
  {'max': ..., 'avg': ..., 'l2': ...}, each [H // window, W // window]."""
  x = jnp.asarray(feature_map, jnp.float32)[None, ..., None]
  return {kind: np.asarray(layers.Pool(kind, window, window).apply({}, x))[0, ..., 0]
          for kind in ('max', 'avg', 'l2')}
