"""Output sizes of conv and pooling layers, and the check that a model fits its input images.

The formula every CNN introduction gives: a W-wide input through a filter of size F with padding P
and stride S gives (W − F + 2P)/S + 1 outputs (rounded down). 'VALID' means P = 0; 'SAME' picks P
so that the output is ceil(W / S), whatever F is.
"""

import math

import jax
import jax.numpy as jnp

from cnn_jax.errors import UserError
from cnn_jax.models.convnet import ConvNet, block_settings


def conv_output_size(size: int, kernel: int, stride: int, padding: str) -> int:
  """Returns the output side of a conv (or pooling) layer: (W − F + 2P)/S + 1, rounded down.

  Examples from introductory material: 32 through 5×5 VALID → 28; 6 through 3×3 VALID → 4.
  """
  if padding == 'SAME':
    return math.ceil(size / stride)
  return (size - kernel) // stride + 1


def _too_small(layer: str, what: str, size: tuple[int, int], kernel: int, stride: int,
               padding: str) -> UserError:
  h, w = size
  side = min(h, w)
  return UserError(
      f'The model does not fit the images: {layer} ({what} {kernel}, stride {stride}, {padding}) '
      f'gets a {h}×{w} input, and (W − F + 2P)/S + 1 = ({side} − {kernel} + 0)/{stride} + 1 '
      f'leaves no output. Use padding SAME, a smaller kernel or window, fewer conv blocks or pools, '
      f'or larger images (config.data.image_size).')


def check_fits(model, image_shape: tuple[int, int, int]) -> None:
  """Raises UserError if some layer of `model` would get an input too small for it.

  A ConvNet is walked block by block with the formula, so the message names the layer; any other
  model is traced abstractly (`jax.eval_shape`, no computation) and its error passed on.
  """
  if isinstance(model, ConvNet):
    h, w = image_shape[:2]
    for i, block in enumerate(block_settings(model)):
      k, s, pad = block['kernel_size'], block['strides'], block['padding']
      if conv_output_size(min(h, w), k, s, pad) < 1:
        raise _too_small(f'conv_{i}', 'kernel', (h, w), k, s, pad)
      h, w = conv_output_size(h, k, s, pad), conv_output_size(w, k, s, pad)
      if block['pool'] != 'none':
        win, stride = block['pool_window'], block['pool_stride']
        if conv_output_size(min(h, w), win, stride, 'VALID') < 1:
          raise _too_small(f'pool_{i}', 'window', (h, w), win, stride, 'VALID')
        h, w = conv_output_size(h, win, stride, 'VALID'), conv_output_size(w, win, stride, 'VALID')
    return
  try:
    jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, *image_shape), jnp.float32))
  except Exception as e:  # pylint: disable=broad-except
    raise UserError(f'The model cannot take {"×".join(map(str, image_shape))} images: '
                    f'{str(e).strip().splitlines()[0]}') from None
