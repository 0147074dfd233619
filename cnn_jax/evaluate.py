"""Evaluate a trained run: `python -m cnn_jax.evaluate --workdir W [--checkpoint best] [--split test]`.

Prints accuracy, loss, per-class accuracy and the confusion matrix, and writes them as JSON to
`W/eval/<split>_step<N>.json`. Needs nothing but the workdir.
"""

import json
import os
import re

from absl import flags

from cnn_jax import cli



def define_flags() -> None:
  """Defines this command's flags (only when it runs, so the module imports anywhere)."""
  flags.DEFINE_string('workdir', None, 'The workdir of a training run.')
  flags.DEFINE_string('checkpoint', 'best', cli.CHECKPOINT_HELP)
  flags.DEFINE_string('split', None, "Split to evaluate; default: the run's eval_split.")
  flags.DEFINE_integer('batch_size', None, "Default: the run's eval_batch_size.", lower_bound=1)
  flags.mark_flag_as_required('workdir')


def format_report(report: dict) -> str:
  """Renders an evaluation report as text: totals, a per-class table, the confusion matrix."""
  names = report['class_names']
  width = max(5, *(len(n) for n in names))
  lines = [f"{report['workdir']} at {report['checkpoint']}; split {report['split']!r}: "
           f"{report['count']:,} images",
           f"accuracy {report['accuracy']:.2%}   loss {report['loss']:.4f}", '',
           f"{'class':<{width}}  accuracy (recall)  precision       F1  correct/count"]
  share = lambda value: f'{value:.2%}' if value is not None else 'n/a'
  for name in names:
    row = report['per_class'][name]
    lines.append(f"{name:<{width}}  {share(row['accuracy']):>17}  {share(row['precision']):>9}  "
                 f"{share(row['f1']):>7}  {row['correct']}/{row['count']}")
  cell = max(width, len(str(max(max(r) for r in report['confusion_matrix']))))
  lines += ['', 'confusion matrix (rows: true class, columns: predicted class)',
            ' ' * (width + 1) + ' '.join(f'{n:>{cell}}' for n in names)]
  lines += [f'{name:<{width}} ' + ' '.join(f'{c:>{cell}}' for c in row)
            for name, row in zip(names, report['confusion_matrix'])]
  return '\n'.join(lines)


def write_report(report: dict, workdir: str) -> str:
  """Writes the report to workdir/eval/<split>_step<N>.json and returns the path."""
  directory = os.path.join(workdir, 'eval')
  os.makedirs(directory, exist_ok=True)
  safe_split = re.sub(r'[^A-Za-z0-9_-]+', '_', report['split']).strip('_')
  path = os.path.join(directory, f"{safe_split}_step{report['checkpoint_step']}.json")
  with open(path, 'w', encoding='utf-8') as f:
    json.dump(report, f, indent=2)
    f.write('\n')
  return path


def main(argv: list[str]) -> None:
  del argv  # cli.run refuses any.
  # Imported once the flags are parsed: --help and flag mistakes answer without loading JAX.
  from cnn_jax.serving import inference  # pylint: disable=g-import-not-at-top
  args = flags.FLAGS
  report = inference.evaluate_workdir(args.workdir, args.checkpoint, args.split, args.batch_size)
  print(format_report(report))
  print(f'\nwritten to {write_report(report, args.workdir)}')


if __name__ == '__main__':
  define_flags()
  cli.run(main)
