"""Predict classes of image files: `python -m cnn_jax.predict --workdir W cat.jpg photos/ ...`.

Each image is decoded, converted to the run's channels, resized to its image shape and normalised
exactly as in training and evaluation, then all of them go through the model in fixed-size jitted
batches. Prints the predicted class and the top-k probabilities per file (`--json` for JSON), or
writes one CSV row per file with `--csv out.csv` (a test set's submission). A file that cannot be
read gets an error line or row, and the other files are still predicted. --workdir may also be a
directory written by `cnn_jax.export`: the same command line then runs the exported model.
"""

import csv
import json
import os
import sys

from absl import flags

from cnn_jax import cli
from cnn_jax.errors import UserError


def define_flags() -> None:
  """Defines this command's flags (only when it runs, so the module imports anywhere)."""
  flags.DEFINE_string('workdir', None, 'The workdir of a training run, or a directory written '
                      'by cnn_jax.export.')
  flags.DEFINE_string('checkpoint', 'best', cli.CHECKPOINT_HELP)
  flags.DEFINE_integer('top_k', 3, 'How many classes to list per image.', lower_bound=1)
  flags.DEFINE_integer('batch_size', 64, 'Images per forward pass.', lower_bound=1)
  flags.DEFINE_bool('json', False, 'Print one JSON object per image instead of text.')
  flags.DEFINE_string('csv', None, 'Write predictions to this CSV file instead of printing them.')
  flags.DEFINE_bool('all_probabilities', False, 'With --csv: a probability column per class.')
  flags.DEFINE_bool('invert', False, 'Invert each image (255 − pixel) before predicting: dark '
                    'ink on white paper for a model trained on light-on-dark digits.')
  flags.mark_flag_as_required('workdir')


def write_csv(predictions: list, path: str, class_names: tuple[str, ...],
              names: list[str], all_probabilities: bool = False) -> None:
  """Writes one row per file: file, prediction, probability, error [, one column per class]."""
  header = ['file', 'prediction', 'probability', 'error']
  if all_probabilities:
    header += [f'probability_{name}' for name in class_names]
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  with open(path, 'w', newline='', encoding='utf-8') as f:
    writer = csv.writer(f)
    writer.writerow(header)
    for name, p in zip(names, predictions):
      if p.error:
        row = [name, '', '', p.error] + ([''] * len(class_names) if all_probabilities else [])
      else:
        row = [name, p.top_k[0][0], f'{p.top_k[0][1]:.6f}', '']
        if all_probabilities:
          row += [f'{q:.6f}' for q in p.probabilities]
      writer.writerow(row)


def display_names(arguments: list[str], files: list[str]) -> list[str]:
  """Names files as a user gave them: relative to the directory argument they were found in."""
  directories = [a for a in arguments if os.path.isdir(a)]
  names = []
  for path in files:
    inside = [d for d in directories if os.path.commonpath([os.path.abspath(d),
                                                            os.path.abspath(path)])
              == os.path.abspath(d)]
    names.append(os.path.relpath(path, inside[0]) if inside else path)
  return names


def format_prediction(p) -> str:
  """One line per file: 'file: class (p%)  other q%  ...' or 'file: error: ...'."""
  if p.error:
    return f'{p.file}: error: {p.error}'
  (best, prob), others = p.top_k[0], p.top_k[1:]
  return (f'{p.file}: {best} ({prob:.1%})'
          + ''.join(f'  {name} {q:.1%}' for name, q in others)
          + ('  [background reversed: unreliable]' if p.reversed_polarity else ''))


def _warn_reversed(predictions: list, trained_on: str | None, inverted: bool) -> None:
  """Says on stderr which images have the opposite background of the training images, and what
  to do about it."""
  flagged = [p.file for p in predictions if p.reversed_polarity]
  if not flagged:
    return
  other = {'dark': 'light', 'light': 'dark'}[trained_on]
  remedy = ('they were inverted by --invert: drop it' if inverted else
            'if they are dark ink on white paper, pass --invert')
  print(f'warning: {len(flagged):,} of {len(predictions):,} images have a {other} background, '
        f'but the model learned from images on a {trained_on} one, so its answers for them are '
        f'unreliable however confident; {remedy}. For example: {", ".join(flagged[:3])}.',
        file=sys.stderr)


def main(argv: list[str]) -> None:
  # Imported once the flags are parsed: --help and flag mistakes answer without loading JAX.
  from cnn_jax.data.images import expand_paths  # pylint: disable=g-import-not-at-top
  from cnn_jax.serving import inference  # pylint: disable=g-import-not-at-top
  args = flags.FLAGS
  files = expand_paths(argv[1:])
  if not files:
    raise UserError('no image files given; usage: cnn-jax predict --workdir W IMAGE_OR_DIR '
                    '[...]')
  model = inference.load_predictor(args.workdir, args.checkpoint)
  if isinstance(model, inference.TrainedModel):  # On stderr: stdout may be JSON lines.
    print(f'Predicting with the checkpoint at {model.checkpoint}.', file=sys.stderr, flush=True)
  predictions = inference.predict_files(model, files, args.top_k, args.batch_size,
                                        progress=bool(args.csv), invert=args.invert)
  _warn_reversed(predictions, inference.background_of(model), args.invert)
  if args.csv:
    write_csv(predictions, args.csv, inference.class_names(model), display_names(argv[1:], files),
              args.all_probabilities)
    failed = sum(p.error is not None for p in predictions)
    print(f'Wrote {len(predictions):,} predictions to {args.csv}'
          + (f' ({failed:,} files could not be read: see the error column).' if failed else '.'))
    return
  for prediction in predictions:
    if args.json:
      record = {'file': prediction.file, 'error': prediction.error}
      if not prediction.error:
        record.update(prediction=prediction.top_k[0][0], probability=prediction.top_k[0][1],
                      top_k=[{'class': n, 'probability': q} for n, q in prediction.top_k],
                      reversed_polarity=prediction.reversed_polarity)
      print(json.dumps(record))
    else:
      print(format_prediction(prediction))


if __name__ == '__main__':
  define_flags()
  cli.run(main, takes_arguments=True)
