"""Augmentation on the device: of training batches inside the jitted train step, and the one
test-time augmentation, the mirror, wherever a trained model's logits are computed.

Random crop with zero padding, horizontal flip, small rotations and random erasing, applied to a
normalised batch [B, H, W, C]. The key comes from the step's key, so augmentation is deterministic
given the seed and a resumed run draws the same crops and flips. Zero padding is the mean colour,
because the images are already normalised. Evaluation draws nothing: with `test_flip` it averages
each image's prediction with its mirror's (`evaluation_logits`), the same in evaluation,
prediction and export.
"""

import dataclasses
import math
from typing import Callable

import jax
import jax.numpy as jnp


@dataclasses.dataclass(frozen=True)
class Augmentation:
  """What to do to each training image; the default does nothing.

  Attributes:
    crop_padding: pad each side by this many pixels, then crop a random H × W window back out.
    horizontal_flip: mirror left-right with probability 1/2 (never for digits: a mirrored 2 is no
      longer a 2).
    rotation_degrees: rotate by an angle drawn uniformly from ±this, about the centre (bilinear).
    erase_probability: with this probability, replace a random rectangle of the image (2–40% of
      its area, aspect ratio 0.3–3.3) with noise: random erasing (Zhong et al. 2017).
    test_flip: not in training: evaluate, predict and export on each image and its mirror,
      averaging the two predicted distributions (`evaluation_logits`).
  """
  crop_padding: int = 0
  horizontal_flip: bool = False
  rotation_degrees: float = 0.0
  erase_probability: float = 0.0
  test_flip: bool = False

  @property
  def active(self) -> bool:
    """True if any training augmentation is switched on."""
    return bool(self.crop_padding or self.horizontal_flip or self.rotation_degrees
                or self.erase_probability)


def _random_crop(images: jax.Array, key: jax.Array, padding: int) -> jax.Array:
  batch, height, width, channels = images.shape
  padded = jnp.pad(images, ((0, 0), (padding, padding), (padding, padding), (0, 0)))
  offsets = jax.random.randint(key, (batch, 2), 0, 2 * padding + 1)  # [B, 2] top-left corners
  crop = lambda image, o: jax.lax.dynamic_slice(image, (o[0], o[1], 0), (height, width, channels))
  return jax.vmap(crop)(padded, offsets)


def _random_flip(images: jax.Array, key: jax.Array) -> jax.Array:
  flip = jax.random.bernoulli(key, 0.5, (images.shape[0],))
  return jnp.where(flip[:, None, None, None], images[:, :, ::-1], images)


def rotate(image: jax.Array, radians: jax.Array) -> jax.Array:
  """Rotates one image [H, W, C] counter-clockwise about its centre; outside pixels become 0."""
  height, width, _ = image.shape
  rows, cols = jnp.meshgrid(jnp.arange(height, dtype=jnp.float32),
                            jnp.arange(width, dtype=jnp.float32), indexing='ij')
  cy, cx = (height - 1) / 2, (width - 1) / 2
  cos, sin = jnp.cos(radians), jnp.sin(radians)
  # Each output pixel samples the input at its position rotated back by -radians.
  src_rows = cy + (rows - cy) * cos - (cols - cx) * sin
  src_cols = cx + (rows - cy) * sin + (cols - cx) * cos
  sample = lambda channel: jax.scipy.ndimage.map_coordinates(
      channel, [src_rows, src_cols], order=1, mode='constant', cval=0.0)
  return jax.vmap(sample, in_axes=2, out_axes=2)(image)


# Random erasing's rectangle: its share of the image's area and its height / width, drawn
# uniformly (the ratio on a log scale), as Zhong et al. draw them.
ERASE_AREA = (0.02, 0.4)
ERASE_ASPECT = (0.3, 1 / 0.3)


def random_erase(images: jax.Array, key: jax.Array, probability: float) -> jax.Array:
  """Replaces, in each image of [B, H, W, C] with probability `probability`, one random
  rectangle with standard normal noise (the images are normalised: noise of their own scale)."""
  batch, height, width, _ = images.shape
  k_apply, k_area, k_aspect, k_top, k_left, k_noise = jax.random.split(key, 6)
  erased = jax.random.bernoulli(k_apply, probability, (batch,))
  area = jax.random.uniform(k_area, (batch,), minval=ERASE_AREA[0], maxval=ERASE_AREA[1])
  aspect = jnp.exp(jax.random.uniform(k_aspect, (batch,), minval=math.log(ERASE_ASPECT[0]),
                                      maxval=math.log(ERASE_ASPECT[1])))
  rect_h = jnp.clip(jnp.round(jnp.sqrt(area * height * width * aspect)), 1, height)  # [B]
  rect_w = jnp.clip(jnp.round(jnp.sqrt(area * height * width / aspect)), 1, width)
  top = jnp.floor(jax.random.uniform(k_top, (batch,)) * (height - rect_h + 1))
  left = jnp.floor(jax.random.uniform(k_left, (batch,)) * (width - rect_w + 1))
  rows = jnp.arange(height)[None, :, None]  # [1, H, 1]
  cols = jnp.arange(width)[None, None, :]  # [1, 1, W]
  inside = ((rows >= top[:, None, None]) & (rows < (top + rect_h)[:, None, None])
            & (cols >= left[:, None, None]) & (cols < (left + rect_w)[:, None, None]))
  mask = (inside & erased[:, None, None])[..., None]  # [B, H, W, 1]
  return jnp.where(mask, jax.random.normal(k_noise, images.shape, images.dtype), images)


def augment_batch(images: jax.Array, key: jax.Array, augmentation: Augmentation) -> jax.Array:
  """Returns `images` [B, H, W, C] with `augmentation` applied independently to each image."""
  crop_key, flip_key, rotate_key = jax.random.split(key, 3)
  if augmentation.crop_padding:
    images = _random_crop(images, crop_key, augmentation.crop_padding)
  if augmentation.horizontal_flip:
    images = _random_flip(images, flip_key)
  if augmentation.rotation_degrees:
    limit = math.radians(augmentation.rotation_degrees)
    angles = jax.random.uniform(rotate_key, (images.shape[0],), minval=-limit, maxval=limit)
    images = jax.vmap(rotate)(images, angles)
  if augmentation.erase_probability:  # A key of its own: the others draw as without it.
    images = random_erase(images, jax.random.fold_in(key, 3), augmentation.erase_probability)
  return images


def evaluation_logits(logits_of: Callable[[jax.Array], jax.Array], images: jax.Array,
                      test_flip: bool) -> jax.Array:
  """Returns `logits_of(images)` [B, K], or with `test_flip` the log of the mean of the softmax
  of the images' and of their mirrors' logits: logits whose softmax is the averaged distribution.

  Images and mirrors go through one call of `logits_of` as one batch of 2B (an evaluation
  model's output for an image does not depend on the rest of its batch): on XLA:CPU, two calls
  of the model in one program ran 3.4x slower than one call, one call on 2B images 2x.
  """
  if not test_flip:
    return logits_of(images)
  both = logits_of(jnp.concatenate([images, jnp.flip(images, axis=2)]))
  pair = jax.nn.log_softmax(both).reshape(2, images.shape[0], -1)
  logits, mirrored = (jax.lax.index_in_dim(pair, i, keepdims=False) for i in (0, 1))
  # log((p + p') / 2) from the log-probabilities, as log-sum-exp: stable, and in operations
  # that every export format has.
  top = jnp.maximum(logits, mirrored)
  return top + jnp.log((jnp.exp(logits - top) + jnp.exp(mirrored - top)) / 2)
