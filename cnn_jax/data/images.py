"""Image operations shared by every source: decoding files and resizing to one shape."""

import os

import numpy as np
from PIL import Image

IMAGE_EXTENSIONS = ('.jpg', '.jpeg', '.png', '.bmp', '.gif', '.webp', '.tif', '.tiff')


class UnreadableImage(Exception):
  """A file that is not a decodable image (empty, truncated, or another kind of file)."""


def read_image(path: str, channels: int) -> np.ndarray:
  """Decodes an image file to uint8 [H, W, channels]: 1 = grey, 3 = RGB.

  Whatever the file holds (grey, palette, RGBA, CMYK, a PNG named .jpg) is converted; the format is
  read from the content, not the extension.

  Raises:
    UnreadableImage: the file is empty, truncated or not an image; the message says which.
  """
  if os.path.getsize(path) == 0:
    raise UnreadableImage('empty file (0 bytes)')
  try:
    with Image.open(path) as image:
      image.load()  # Decodes now, so a truncated file fails here rather than later.
      converted = image.convert('L' if channels == 1 else 'RGB')
  except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
    raise UnreadableImage(f'not a readable image: {e}') from None
  array = np.asarray(converted, np.uint8)
  return array[..., None] if channels == 1 else array


def resize_image(image: np.ndarray, size: int | tuple[int, int]) -> np.ndarray:
  """Bilinear resize of one uint8 [H, W, C] image to [size, size, C] (or [h, w, C] for a pair).

  A no-op when the image already has that size.
  """
  height, width = (size, size) if isinstance(size, int) else size
  if image.shape[0] == height and image.shape[1] == width:
    return image
  grey = image.shape[-1] == 1
  pil = Image.fromarray(image[..., 0] if grey else image)
  out = np.asarray(pil.resize((width, height), Image.BILINEAR))
  return out[..., None] if grey else out


def resize_images(images: np.ndarray, size: int) -> np.ndarray:
  """Resizes a stack of images [N, H, W, C] to [N, size, size, C]."""
  return np.stack([resize_image(image, size) for image in images])
