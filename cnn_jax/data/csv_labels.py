"""Images in a directory, labelled by a CSV file: the layout of practice problems and Kaggle.

    DIR/1.png, DIR/2.png, ...      train.csv:  filename,label      or   id,label
                                               1.png,4                  1,4
                                               2.png,9                  2,9

The file column may give names with or without extension (ids are resolved against DIR); labels
may be names ('cat') or integers. Class names are the distinct labels, sorted (numerically when
all are integers), unless `class_names` fixes them. Rows naming a missing file, repeating an
earlier row, or giving a label outside `class_names` are left out and reported with their line
numbers; the caller decides when there are too many.
"""

import csv
import os

from cnn_jax.data.image_folder import FolderIndex
from cnn_jax.data.images import IMAGE_EXTENSIONS
from cnn_jax.errors import UserError

FILE_COLUMNS = ('filename', 'file', 'image', 'image_id', 'id', 'path')
LABEL_COLUMNS = ('label', 'class', 'category', 'target')


def pick_column(given: str, candidates: tuple[str, ...], header: list[str], what: str,
                csv_path: str, option: str) -> str:
  """Returns the column of `header` that holds the `what` ('file', 'label'): `given`, which the
  user named with `option`, else the first header whose name is one of `candidates`.

  Raises:
    UserError: no such column; the message lists the columns there are.
  """
  if given:
    if given not in header:
      raise UserError(f'{csv_path} has no column {given!r} ({option}); its columns are {header}.')
    return given
  for name in header:
    if name.strip().lower() in candidates:
      return name
  raise UserError(f'{csv_path}: no {what} column among {header}; name it with {option}=NAME.')


def _resolver(image_dir: str):
  """Returns a function from a CSV file entry to an existing path, or None."""
  by_stem = {}
  for name in sorted(os.listdir(image_dir)):
    stem, extension = os.path.splitext(name)
    if extension.lower() in IMAGE_EXTENSIONS:
      by_stem.setdefault(stem, name)

  def resolve(entry: str) -> str | None:
    path = os.path.join(image_dir, entry)
    if os.path.isfile(path):
      return path
    if not os.path.splitext(entry)[1] and entry in by_stem:  # An id without an extension.
      return os.path.join(image_dir, by_stem[entry])
    return None
  return resolve


def _sorted_classes(labels: set[str]) -> tuple[str, ...]:
  if all(label.lstrip('-').isdigit() for label in labels):
    return tuple(sorted(labels, key=int))  # 2 before 10.
  return tuple(sorted(labels))


def index_csv(csv_path: str, image_dir: str, file_column: str = '', label_column: str = '',
              class_names: tuple[str, ...] = ()) -> tuple[FolderIndex, list[tuple[str, str]]]:
  """Reads the CSV; returns the usable rows as a FolderIndex and the problems as (where, why).

  Raises:
    UserError: the CSV or directory is missing, a column is not found, or no row is usable.
  """
  if not os.path.isfile(csv_path):
    raise UserError(f'config.data.csv={csv_path!r} is not a file.')
  if not os.path.isdir(image_dir):
    raise UserError(f'config.data.path={image_dir!r} is not a directory.')
  resolve = _resolver(image_dir)
  rows, problems, seen = [], [], {}
  with open(csv_path, newline='', encoding='utf-8-sig') as f:  # -sig: Excel's byte-order mark.
    reader = csv.DictReader(f)
    header = reader.fieldnames or []
    file_col = pick_column(file_column, FILE_COLUMNS, header, 'file', csv_path,
                           '--config.data.csv_file_column')
    label_col = pick_column(label_column, LABEL_COLUMNS, header, 'label', csv_path,
                            '--config.data.csv_label_column')
    for row in reader:
      where = f'{csv_path}:{reader.line_num}'
      entry, label = (row.get(file_col) or '').strip(), (row.get(label_col) or '').strip()
      path = resolve(entry) if entry else None
      if path is None:
        problems.append((where, f'file {entry!r} not found in {image_dir}'))
      elif path in seen:
        problems.append((where, f'repeats line {seen[path]} ({entry!r})'))
      elif class_names and label not in class_names:
        problems.append((where, f'label {label!r} is not one of the classes {list(class_names)}'))
      else:
        seen[path] = reader.line_num
        rows.append((path, label))
  if not rows:
    raise UserError(f'{csv_path}: none of its rows names a usable image in {image_dir}; e.g. '
                    + '; '.join(f'{w}: {why}' for w, why in problems[:3]))
  names = tuple(class_names) or _sorted_classes({label for _, label in rows})
  return FolderIndex(image_dir, names, tuple(p for p, _ in rows),
                     tuple(names.index(label) for _, label in rows)), problems
