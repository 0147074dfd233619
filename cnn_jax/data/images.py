"""Image operations shared by every source: decoding files and resizing to one shape."""

import errno
import os

import numpy as np
from PIL import Image

from cnn_jax.errors import UserError

IMAGE_EXTENSIONS = ('.jpg', '.jpeg', '.png', '.bmp', '.gif', '.webp', '.tif', '.tiff')


def image_files(directory: str) -> list[str]:
  """Every entry under `directory` named like an image (recursively, by extension), sorted: image
  files, and the entries that only look like them (broken links, a directory named x.png), which
  reading then reports as unreadable rather than leaving out unseen."""
  found = []
  for root, dirs, names in os.walk(directory):
    named_like_images = [d for d in dirs if d.lower().endswith(IMAGE_EXTENSIONS)]
    dirs[:] = [d for d in dirs if d not in named_like_images]  # Listed, not walked into.
    found += [os.path.join(root, name) for name in names + named_like_images
              if name.lower().endswith(IMAGE_EXTENSIONS)]
  return sorted(found)


def expand_paths(paths: list[str]) -> list[str]:
  """Returns the files named, with each directory replaced by its image files (recursive, sorted).

  A path that does not exist stays in the list, so that its caller reports it beside the others
  (see `UnreadableImage`) rather than giving up on all of them.

  Raises:
    UserError: none of the paths exists.
  """
  if paths and not any(os.path.exists(path) for path in paths):
    raise UserError(f'{paths[0]!r} does not exist' + (', nor does any other path given.'
                                                     if len(paths) > 1 else '.'))
  files = []
  for path in paths:
    files.extend(image_files(path) if os.path.isdir(path) else [path])
  return files


class UnreadableImage(Exception):
  """A file that is not a decodable image (empty, truncated, or another kind of file)."""


RESIZE_MODES = ('squash', 'crop')


def _entry_problem(path: str) -> str | None:
  """Why the folder entry `path` is no file to read, or None: missing, a broken or looping
  symbolic link, a directory named like an image, or not readable by this user."""
  if not os.path.exists(path):
    if not os.path.islink(path):
      return 'does not exist'
    try:
      os.stat(path)
    except OSError as e:
      if e.errno == errno.ELOOP:
        return 'a symbolic link that loops'
    return f'a broken symbolic link (to {os.readlink(path)!r}, which does not exist)'
  if os.path.isdir(path):
    return 'a directory, not an image file'
  if not os.access(path, os.R_OK):
    return 'not readable by this user (permission denied)'
  return None


def _decode(path: str, channels: int, draft_size: int | None = None) -> Image.Image:
  """Opens and fully decodes `path` as grey (channels=1) or RGB, whatever its own mode."""
  problem = _entry_problem(path)
  if problem:
    raise UnreadableImage(problem)
  if os.path.getsize(path) == 0:
    raise UnreadableImage('empty file (0 bytes)')
  mode = 'L' if channels == 1 else 'RGB'
  try:
    with Image.open(path) as image:
      if draft_size:  # JPEG only: decode at 1/2, 1/4 or 1/8 scale if that still covers the size.
        image.draft(mode, (draft_size, draft_size))
      image.load()  # Decodes now, so a truncated file fails here rather than later.
      return _to_8_bit(image).convert(mode)
  except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
    raise UnreadableImage(f'not a readable image: {e}') from None


def _to_8_bit(image: Image.Image) -> Image.Image:
  """`image` with 8-bit pixels, scaled from 16-bit, 32-bit integer or float grey ones.

  PIL's own convert('L') clips such pixels to 0..255 instead of scaling them (a 16-bit photo of
  mean 145 would come out almost white).
  """
  if image.mode not in ('I', 'F') and not image.mode.startswith('I;16'):
    return image
  pixels = np.asarray(image, np.float64)
  if image.mode == 'F':  # Floats: [0, 1] if they fit, else taken as 0..255.
    full_scale = 1.0 if pixels.max(initial=0.0) <= 1.0 else 255.0
  else:  # 16-bit, or 32-bit integers holding up to 16 bits (PIL opens 16-bit PNGs as 'I').
    full_scale = 65535.0 if pixels.max(initial=0.0) <= 65535 else float(pixels.max())
  scaled = np.clip(np.round(pixels * (255.0 / full_scale)), 0, 255).astype(np.uint8)
  return Image.fromarray(scaled, 'L')


def _to_array(image: Image.Image, channels: int) -> np.ndarray:
  array = np.asarray(image, np.uint8)
  return array[..., None] if channels == 1 else array


def from_memory(image, channels: int) -> np.ndarray:
  """An image in memory as uint8 [H, W, channels]: a PIL image of any mode, or an array [H, W] or
  [H, W, 1|3|4] of 8-bit pixel values (any integer dtype, 0–255) or floats (in [0, 1] if they fit,
  else taken as 0–255).

  Raises:
    UnreadableImage: an array of another shape, or integers outside 0–255.
  """
  if isinstance(image, Image.Image):
    return _to_array(_to_8_bit(image).convert('L' if channels == 1 else 'RGB'), channels)
  array = np.asarray(image)
  if array.ndim == 3 and array.shape[-1] == 1:
    array = array[..., 0]
  if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[-1] not in (3, 4)):
    raise UnreadableImage(f'an array of shape {array.shape}: give [H, W] or [H, W, C] with C = 1, '
                          '3 or 4')
  if np.issubdtype(array.dtype, np.floating):
    full_scale = 1.0 if array.max(initial=0.0) <= 1.0 else 255.0
    array = np.clip(np.round(array * (255.0 / full_scale)), 0, 255)
  elif array.size and (array.min() < 0 or array.max() > 255):
    raise UnreadableImage(f'integer pixels from {array.min()} to {array.max()}: give 8-bit values '
                          '(0–255), or floats in [0, 1]')
  return from_memory(Image.fromarray(array.astype(np.uint8)), channels)


def read_image(path: str, channels: int) -> np.ndarray:
  """Decodes an image file to uint8 [H, W, channels]: 1 = grey, 3 = RGB.

  Whatever the file holds (grey, palette, RGBA, CMYK, a PNG named .jpg) is converted; the format is
  read from the content, not the extension.

  Raises:
    UnreadableImage: the file is empty, truncated or not an image; the message says which.
  """
  return _to_array(_decode(path, channels), channels)


def load_resized(path: str, size: int, channels: int, resize: str = 'squash') -> np.ndarray:
  """Decodes `path` straight to uint8 [size, size, channels].

  resize: 'squash' scales the whole image to size × size (aspect ratio not kept); 'crop' scales
  the shorter side to `size` and keeps the centre square. Large JPEGs are decoded at a reduced
  scale first (PIL's draft mode), several times faster with no visible loss after the resize.

  Raises:
    UnreadableImage: as for `read_image`.
  """
  image = _decode(path, channels, draft_size=size)
  if resize == 'crop':
    top, left, side = _center_square(image.height, image.width)
    image = image.crop((left, top, left + side, top + side))
  return _to_array(image.resize((size, size), Image.BILINEAR), channels)


def _center_square(height: int, width: int) -> tuple[int, int, int]:
  """(top, left, side) of the centre square of a height × width image: what 'crop' keeps."""
  side = min(height, width)
  return (height - side) // 2, (width - side) // 2, side


def crop_center_square(image: np.ndarray) -> np.ndarray:
  """Returns the centre square of a [H, W, C] image (side min(H, W)), as 'crop' resizing keeps."""
  top, left, side = _center_square(*image.shape[:2])
  return image[top:top + side, left:left + side]


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
