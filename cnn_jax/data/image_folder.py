"""The user's own images: one subfolder per class, or the class in the file name.

Layouts recognised (the class names come from the folders or file names, sorted):
  DIR/cat/*.jpg, DIR/dog/*.jpg          one subfolder per class (Keras image_dataset_from_directory)
  DIR/PetImages/Cat, DIR/PetImages/Dog  the Microsoft cats-and-dogs archive: one wrapper folder
  DIR/cat.123.jpg, DIR/dog.45.jpg       Kaggle "dogs-vs-cats": the class before the first '.'

Splits: 'train' and 'validation', a deterministic split by `validation_fraction` and `split_seed`
(the files are shuffled with the seed, and the last fraction is held out, as Keras does). Files
that cannot be decoded are skipped and reported; readable odd ones (grey, CMYK, RGBA, a PNG named
.jpg) are converted.
"""

import concurrent.futures
import dataclasses
import os

import numpy as np
from tqdm import tqdm

from cnn_jax.data import images, slicing
from cnn_jax.data.dataset import Split
from cnn_jax.errors import UserError

SPLITS = ('train', 'validation')


@dataclasses.dataclass(frozen=True)
class FolderIndex:
  """Every image file of a folder dataset with its label, in a fixed (sorted) order."""
  root: str
  class_names: tuple[str, ...]
  files: tuple[str, ...]
  labels: tuple[int, ...]


def _holds_folders_only(path: str) -> bool:
  """Whether `path` holds subfolders and no image of its own: the classes (or another wrapper)
  are inside it. A folder of images is one class, not a wrapper."""
  names = os.listdir(path)
  return (any(os.path.isdir(os.path.join(path, n)) and not n.startswith('.') for n in names)
          and not any(n.lower().endswith(images.IMAGE_EXTENSIONS) for n in names))


def index_folder(path: str) -> FolderIndex:
  """Finds the classes and files under `path` in any of the layouts above.

  Raises:
    UserError: the directory is missing, empty, or has fewer than two classes.
  """
  if not os.path.isdir(path):
    raise UserError(f'config.data.path={path!r} is not a directory.')
  subdirs = sorted(d for d in os.listdir(path) if os.path.isdir(os.path.join(path, d))
                   and not d.startswith('.') and not d.lower().endswith(images.IMAGE_EXTENSIONS))
  # Every entry named like an image: one that is no readable file is listed as skipped.
  flat = sorted(os.path.join(path, n) for n in os.listdir(path)
                if n.lower().endswith(images.IMAGE_EXTENSIONS))
  if len(subdirs) == 1 and not flat:
    inner = os.path.join(path, subdirs[0])
    if _holds_folders_only(inner):  # A wrapper such as PetImages/: look inside it.
      return index_folder(inner)
    raise UserError(f'{path!r} holds one class folder, {subdirs[0]!r}: a classifier needs two or '
                    f'more classes, each in its own subfolder (e.g. {path}/other/).')
  if subdirs and len(subdirs) >= 2:
    class_names = tuple(subdirs)
    found = [images.image_files(os.path.join(path, name)) for name in class_names]
    empty = [name for name, class_files in zip(class_names, found) if not class_files]
    if empty:
      raise UserError(f'class folder(s) {", ".join(map(repr, empty))} in {path!r} hold no image '
                      'file: the model could never learn those classes. Fill or remove them.')
    files = [f for class_files in found for f in class_files]
    labels = [label for label, class_files in enumerate(found) for _ in class_files]
  else:  # Kaggle layout: the class is the file name up to the first '.'.
    files = flat
    prefixes = [os.path.basename(f).split('.')[0].lower() for f in files]
    class_names = tuple(sorted(set(prefixes)))
    labels = [class_names.index(p) for p in prefixes]
    if len(files) > 2 and len(class_names) == len(files):
      raise UserError(f'{path!r}: every one of its {len(files):,} images would be a class of its '
                      'own (names like CLASS.N.jpg give the class before the first dot); put each '
                      'class in its own subfolder instead.')
  if len(class_names) < 2 or not files:
    raise UserError(
        f'{path!r} holds {len(files)} images in {len(class_names)} class(es); put each class in '
        'its own subfolder (DIR/cat/*.jpg, DIR/dog/*.jpg) or name files CLASS.N.jpg.')
  return FolderIndex(path, class_names, tuple(files), tuple(labels))


def split_indices(num_files: int, split: str, validation_fraction: float,
                  split_seed: int) -> np.ndarray:
  """Returns the file indices of `split`: disjoint, covering all files, fixed by the seed."""
  if split not in SPLITS:
    raise UserError(f'an image folder has splits {SPLITS}; got {split!r}. (Without a test split: '
                    "--config.data.test_split=''.)")
  kept, held_out = slicing.holdout(num_files, validation_fraction, split_seed)
  return held_out if split == 'validation' else kept


def decode_files(files: list[str], size: int, channels: int, resize: str, workers: int,
                 progress: bool = False) -> tuple[list[np.ndarray | None], list[tuple[str, str]]]:
  """Decodes and resizes `files` with `workers` threads (PIL releases the GIL while decoding).

  With `progress`, a tqdm bar counts the files (shown on a terminal only).

  Returns:
    (arrays, skipped): arrays[i] is uint8 [size, size, channels] or None if file i was unreadable;
    skipped lists (file, reason) for those.
  """
  def load(path):
    try:
      return images.load_resized(path, size, channels, resize), None
    except (images.UnreadableImage, OSError) as e:
      return None, str(e)

  with concurrent.futures.ThreadPoolExecutor(max(1, workers)) as pool:
    results = list(tqdm(pool.map(load, files, chunksize=64), total=len(files), unit='image',
                        desc='decoding', disable=None if progress else True))
  skipped = [(f, reason) for f, (_, reason) in zip(files, results) if reason is not None]
  return [array for array, _ in results], skipped


def classes_missing(index: FolderIndex, labels: list[int]) -> list[str]:
  """The classes of `index` that no label of `labels` (a split's) names."""
  present = set(labels)
  return [name for k, name in enumerate(index.class_names) if k not in present]


def split_files(index: FolderIndex, split: str, validation_fraction: float,
                split_seed: int) -> tuple[list[str], list[int]]:
  """Returns the (files, labels) of `split`."""
  chosen = split_indices(len(index.files), split, validation_fraction, split_seed)
  return [index.files[i] for i in chosen], [index.labels[i] for i in chosen]


def decode_split(files: list[str], labels: list[int], size: int, channels: int, resize: str,
                 workers: int) -> Split:
  """Decodes `files` into a Split whose `skipped` lists the unreadable ones.

  How many unreadable files are too many is decided over the whole dataset (`check_skipped`).

  Raises:
    UserError: no file could be read (a wrong directory or a damaged download, more likely than
      bad photos; the message lists some).
  """
  arrays, skipped = decode_files(files, size, channels, resize, workers)
  keep = [i for i, array in enumerate(arrays) if array is not None]
  if not keep:
    raise UserError(f'none of the {len(files):,} files could be read. For example: '
                    + _examples(skipped))
  return Split(np.stack([arrays[i] for i in keep]),
               np.asarray([labels[i] for i in keep], np.int32), tuple(skipped))


def _examples(skipped) -> str:
  return '; '.join(f'{f}: {reason}' for f, reason in skipped[:5]) + '.'


def check_skipped(skipped_by_split: dict[str, tuple], total_files: int,
                  max_skip_fraction: float) -> None:
  """Stops the run if more than `max_skip_fraction` of the dataset's `total_files` were
  unreadable, counting every split loaded so far ({split: its skipped (file, reason) pairs}).

  One limit for the whole dataset: a few bad files that happen to fall in a small validation
  split are still a few bad files.

  Raises:
    UserError: too many; the message gives the count of each split and some files with reasons.
  """
  bad = sum(len(s) for s in skipped_by_split.values())
  if bad <= max_skip_fraction * total_files:
    return
  where = ', '.join(f'{split}: {len(s):,}' for split, s in skipped_by_split.items() if s)
  raise UserError(
      f'{bad:,} of {total_files:,} files ({bad / total_files:.1%}) could not be read ({where}), '
      f'more than config.data.max_skip_fraction={max_skip_fraction}. For example: '
      + _examples([pair for s in skipped_by_split.values() for pair in s])
      + ' Remove or repair them, or raise the threshold.')
