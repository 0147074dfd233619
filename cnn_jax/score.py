"""Score a predictions CSV against labels: `python -m cnn_jax.score --predictions P --labels L`.

P is what `cnn_jax.predict --csv` writes (file, prediction, ...); L is a CSV of file (or id) and
label columns, as practice problems hold back for their test sets. Rows are matched by file name
without directory or extension, so 'test/17.png' in P matches id '17' in L.
"""

import csv
import os

from absl import flags

from cnn_jax import cli
from cnn_jax.data.csv_labels import FILE_COLUMNS, LABEL_COLUMNS, pick_column
from cnn_jax.errors import UserError


def define_flags() -> None:
  """Defines this command's flags (only when it runs, so the module imports anywhere)."""
  flags.DEFINE_string('predictions', None, 'CSV written by cnn_jax.predict --csv.')
  flags.DEFINE_string('labels', None, 'CSV with the true label of each file.')
  flags.DEFINE_string('file_column', '', 'Label CSV file column; default: the first of '
                      + ', '.join(FILE_COLUMNS) + '.')
  flags.DEFINE_string('label_column', '', 'Label CSV label column; default: the first of '
                      + ', '.join(LABEL_COLUMNS) + '.')
  flags.mark_flags_as_required(['predictions', 'labels'])


def _key(name: str) -> str:
  return os.path.splitext(os.path.basename(name.strip()))[0]


def _read(path: str, file_column: str, label_column: str, file_names, label_names,
          options: tuple[str, str] = ('--file_column', '--label_column')) -> dict:
  """{file name without directory or extension: label} of the CSV at `path`; `options` name the
  settings that choose its columns, for the messages."""
  if not os.path.isfile(path):
    raise UserError(f'{path!r} is not a file.')
  with open(path, newline='', encoding='utf-8-sig') as f:
    reader = csv.DictReader(f)
    header = reader.fieldnames or []
    file_col = pick_column(file_column, file_names, header, 'file', path, options[0])
    label_col = pick_column(label_column, label_names, header, 'label', path, options[1])
    return {_key(row[file_col]): (row[label_col] or '').strip() for row in reader}


def score(predictions_csv: str, labels_csv: str, file_column: str = '',
          label_column: str = '') -> dict:
  """Returns {'accuracy', 'correct', 'scored', 'missing', 'unreadable', 'extra'} for the two CSVs.

  accuracy = correct / number of labelled files: a file without a prediction, or whose prediction
  failed, counts as wrong, as it would on a leaderboard.
  """
  predicted = _read(predictions_csv, 'file', 'prediction', ('file',), ('prediction',),
                    ('a CSV written by cnn_jax.predict --csv',) * 2)
  truth = _read(labels_csv, file_column, label_column, FILE_COLUMNS, LABEL_COLUMNS)
  if not truth:
    raise UserError(f'{labels_csv} has no rows.')
  correct = sum(predicted.get(key) == label for key, label in truth.items())
  return {'accuracy': correct / len(truth), 'correct': correct, 'scored': len(truth),
          'missing': sum(key not in predicted for key in truth),
          'unreadable': sum(predicted.get(key) == '' for key in truth),
          'extra': sum(key not in truth for key in predicted)}


def main(argv: list[str]) -> None:
  del argv  # cli.run refuses any.
  args = flags.FLAGS
  result = score(args.predictions, args.labels, args.file_column, args.label_column)
  print(f"accuracy {result['accuracy']:.2%} ({result['correct']:,}/{result['scored']:,} labelled "
        f"files); without a prediction: {result['missing']:,}; unreadable: "
        f"{result['unreadable']:,}; predicted but not labelled: {result['extra']:,}")


if __name__ == '__main__':
  define_flags()
  cli.run(main)
