"""See a model without training it: `python -m cnn_jax.summary --config digits`.

Prints every layer with its filter size F, stride S and padding P, its output size worked out as
(W − F + 2P)/S + 1, its parameters worked out (a conv's F·F·Cin·Cout weights plus a bias per
filter) and its FLOPs; then the totals, and how many parameters a fully connected network with
the same inputs, hidden widths and outputs would need. No data is read and nothing is computed
when --image_size, --channels and --num_classes are given; otherwise they come from the config's
dataset. Any config field can be overridden, e.g. `--config.model.kernel_size=5`.
"""

import json

from absl import flags
from ml_collections import config_flags

from cnn_jax import cli


def define_flags() -> None:
  """Defines this command's flags (only when it runs, so the module imports anywhere)."""
  config_flags.DEFINE_config_file(
      'config', None, 'A shipped config by name (digits, mnist, ...) or the path of a config '
      'file with get_config(), e.g. my_config.py.',
      lock_config=True)
  flags.DEFINE_integer('image_size', None, 'Input side W (default: the dataset\'s, after '
                       'config.data.image_size).', lower_bound=1)
  flags.DEFINE_integer('channels', None, 'Input channels (default: the dataset\'s).',
                       lower_bound=1)
  flags.DEFINE_integer('num_classes', None, 'Outputs (default: the dataset\'s classes).',
                       lower_bound=2)
  flags.DEFINE_bool('json', False, 'Print the rows and totals as JSON.')
  flags.mark_flags_as_required(['config'])


def main(argv: list[str]) -> None:
  del argv  # cli.run refuses any.
  config = cli.parsed_config()
  # Imported once the flags are parsed: --help and flag mistakes answer without loading JAX.
  from cnn_jax import data, models  # pylint: disable=g-import-not-at-top
  from cnn_jax.errors import UserError  # pylint: disable=g-import-not-at-top
  from cnn_jax.models import summary  # pylint: disable=g-import-not-at-top
  from cnn_jax.training import setup  # pylint: disable=g-import-not-at-top
  from cnn_jax.training.validation import validate_config  # pylint: disable=g-import-not-at-top
  args = flags.FLAGS
  validate_config(config)
  shape, num_classes = None, args.num_classes
  if args.image_size and args.channels:
    shape = (args.image_size, args.image_size, args.channels)
  if shape is None or num_classes is None:
    try:
      info = data.describe_dataset(setup.data_spec(config))
    except UserError as e:
      raise UserError(f'{e}\nOr see the model without its data: give --image_size, --channels '
                      'and --num_classes.') from None
    if shape is None:
      h, w, c = info.image_shape
      shape = (args.image_size or h, args.image_size or w, args.channels or c)
    num_classes = num_classes or info.num_classes
  model = setup.build_model(config, num_classes)  # The textbook's layers: what it computes.
  models.check_fits(model, shape)
  rows = summary.summarize(model, shape)
  mlp = summary.mlp_params(shape, tuple(getattr(model, 'dense', ())), num_classes)
  if args.json:
    print(json.dumps({'model': config.model.name, 'input_shape': list(shape),
                      'num_classes': num_classes, 'layers': summary.explained_rows(rows),
                      'total_params': sum(r.params for r in rows),
                      'total_flops': sum(r.flops for r in rows), 'mlp_params': mlp}, indent=2))
  else:
    print(f'{config.model.name} on {"×".join(map(str, shape))} images, {num_classes} classes')
    print(summary.format_explained(rows, mlp))


if __name__ == '__main__':
  define_flags()
  cli.run(main)
