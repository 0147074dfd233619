"""A cache of decoded, resized splits, so the second run does not decode every JPEG again.

A cached split is one .npz file named by a hash of everything that determines its content: the
files (paths, sizes, modification times), the image size, channels and resize mode. Changing any
of them, or any file, gives a new name; nothing stale is ever read.
"""

import hashlib
import json
import os
from typing import Callable

import numpy as np

from cnn_jax.data.dataset import Split


def cache_key(files: list[str], **settings) -> str:
  """Returns a hex digest of the files' identities and the decode settings."""
  digest = hashlib.sha256(json.dumps(settings, sort_keys=True).encode())
  for path in files:
    stat = os.stat(path)
    digest.update(f'{path}\0{stat.st_size}\0{stat.st_mtime_ns}\n'.encode())
  return digest.hexdigest()[:20]


def cached_split(directory: str | None, name: str, key: str,
                 build: Callable[[], Split]) -> tuple[Split, bool]:
  """Returns (split, came_from_cache): the cached split for `key`, or `build()` saved for next time.

  With `directory` None, or not writable, the split is built and nothing is cached.
  """
  path = os.path.join(directory, f'{name}-{key}.npz') if directory else None
  if path and os.path.exists(path):
    with np.load(path) as stored:
      skipped = [tuple(pair) for pair in stored['skipped'].tolist()]
      return Split(stored['images'], stored['labels'], tuple(skipped)), True
  split = build()
  if path:
    try:
      os.makedirs(directory, exist_ok=True)
      temporary = path + '.tmp.npz'
      np.savez(temporary, images=split.images, labels=split.labels,
               skipped=np.asarray(split.skipped, dtype=str).reshape(-1, 2))
      os.replace(temporary, path)  # Atomic: a killed run never leaves a half-written cache file.
    except OSError:
      pass  # A read-only dataset directory: train without the cache.
  return split, False
