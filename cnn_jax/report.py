"""One report per run: `python -m cnn_jax.report --workdir W [--image photo.jpg]`.

Writes W/report/index.html with PNG figures beside it: training curves, the confusion matrix and
per-class accuracy, the first layer's filters, the feature maps of every conv and pooling layer
for one image, and the most confidently wrong examples, with the config, the model summary and
the final metrics (see `cnn_jax.reporting.run_report`). Everything comes from the workdir; no
display is needed.
"""

from absl import flags

from cnn_jax import cli


def define_flags() -> None:
  """Defines this command's flags (only when it runs, so the module imports anywhere)."""
  flags.DEFINE_string('workdir', None, 'The workdir of a training run.')
  flags.DEFINE_string('checkpoint', 'best', cli.CHECKPOINT_HELP)
  flags.DEFINE_string('image', None, 'Image for the feature maps; default: the first image of '
                      'the split.')
  flags.DEFINE_string('split', None, "Split for the confusion matrix and mistakes; default: the "
                      "run's test_split, else its eval_split.")
  flags.mark_flag_as_required('workdir')


def main(argv: list[str]) -> None:
  del argv  # cli.run refuses any.
  # Imported once the flags are parsed: --help and flag mistakes answer without loading JAX.
  from cnn_jax.reporting import run_report  # pylint: disable=g-import-not-at-top
  args = flags.FLAGS
  index = run_report.build_report(args.workdir, args.checkpoint, args.image, args.split)
  print(f'Report written to {index}')


if __name__ == '__main__':
  define_flags()
  cli.run(main)
