"""Image operations shared by every source: resizing to the one shape a batch needs."""

import numpy as np
from PIL import Image


def resize_image(image: np.ndarray, size: int) -> np.ndarray:
  """Bilinear resize of one uint8 [H, W, C] image to [size, size, C]; a no-op at that size."""
  if image.shape[0] == size and image.shape[1] == size:
    return image
  grey = image.shape[-1] == 1
  pil = Image.fromarray(image[..., 0] if grey else image)
  out = np.asarray(pil.resize((size, size), Image.BILINEAR))
  return out[..., None] if grey else out


def resize_images(images: np.ndarray, size: int) -> np.ndarray:
  """Resizes a stack of images [N, H, W, C] to [N, size, size, C]."""
  return np.stack([resize_image(image, size) for image in images])
