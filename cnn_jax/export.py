"""Export a trained model: `python -m cnn_jax.export --workdir W [--format onnx] [--batch N]`.

Writes the prediction, 8-bit images in and class probabilities out with the run's input
normalisation and the softmax inside, as a StableHLO program (`jax.export`) or an ONNX model,
plus model.json and exported_model.py, a loader that needs only NumPy and JAX (StableHLO) or
onnxruntime (ONNX): the model then runs where cnn_jax and Flax are not installed.
"""

import os

from absl import flags

from cnn_jax import cli


def define_flags() -> None:
  """Defines this command's flags (only when it runs, so the module imports anywhere)."""
  flags.DEFINE_string('workdir', None, 'The workdir of a training run.')
  flags.DEFINE_string('checkpoint', 'best', cli.CHECKPOINT_HELP)
  flags.DEFINE_string('out', None, 'Directory to write to; default: WORKDIR/export.')
  flags.DEFINE_enum('format', 'stablehlo', ['stablehlo', 'onnx'],
                    "What to write: a StableHLO program for JAX, or an ONNX model (needs "
                    "pip install 'cnn_jax[onnx]').")
  flags.DEFINE_string('batch', 'dynamic', "A fixed batch size, or 'dynamic' for any.")
  flags.DEFINE_list('platforms', None, "StableHLO: platforms to lower for, e.g. 'cpu,cuda'; "
                    "default: this machine's.")
  flags.mark_flag_as_required('workdir')


def main(argv: list[str]) -> None:
  del argv  # cli.run refuses any.
  # Imported once the flags are parsed: --help and flag mistakes answer without loading JAX.
  from cnn_jax.errors import UserError  # pylint: disable=g-import-not-at-top
  from cnn_jax.serving import export, inference  # pylint: disable=g-import-not-at-top
  args = flags.FLAGS
  if args.batch == 'dynamic':
    batch = None
  elif args.batch.isdigit() and int(args.batch) > 0:
    batch = int(args.batch)
  else:
    raise UserError(f"--batch={args.batch!r}: give a positive batch size, or 'dynamic'")
  trained = inference.load_trained(args.workdir, args.checkpoint)
  directory = args.out or os.path.join(args.workdir, 'export')
  paths = export.export_model(trained, directory, args.format, batch,
                              tuple(args.platforms) if args.platforms else None)
  print(f'Exported {trained.checkpoint} of {args.workdir} as {args.format} '
        f'({len(trained.info.class_names)} '
        f'classes, {"×".join(map(str, trained.info.image_shape))} images, batch '
        f'{batch or "any"}) to {directory}: ' + ', '.join(os.path.basename(p) for p in paths))


if __name__ == '__main__':
  define_flags()
  cli.run(main)
