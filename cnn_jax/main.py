"""Train a CNN: `python -m cnn_jax.main --config digits --workdir runs/digits`.

Any config field can be overridden, e.g. `--config.optimizer.learning_rate=3e-3`; a config file
can take an argument after a colon, e.g. `--config mnist:small`.
"""

import sys

from absl import flags
from ml_collections import config_flags

from cnn_jax import cli



def define_flags() -> None:
  """Defines this command's flags (only when it runs, so the module imports anywhere)."""
  config_flags.DEFINE_config_file(
      'config', None, 'A shipped config by name (digits, mnist, ...) or the path of a config '
      'file with get_config(), e.g. my_config.py.',
      lock_config=True)
  flags.DEFINE_string('workdir', None, 'Directory for metrics, config and checkpoints.')
  flags.DEFINE_string('coordinator_address', None, 'Multi-process runs on plain machines: '
                      'HOST:PORT of process 0 (TPU pods and SLURM are detected without it).')
  flags.DEFINE_integer('num_processes', None, 'Multi-process runs: how many processes.')
  flags.DEFINE_integer('process_id', None, 'Multi-process runs: this process, 0 … N-1.')
  flags.DEFINE_enum('cluster', 'auto', ['auto', 'none', 'slurm', 'ompi', 'mpi4py', 'tpu',
                                         'gcetpu', 'gketpu'],
                    "Multi-process jobs JAX joins by itself: 'auto' (SLURM, Open MPI or TPU jobs "
                    "of several processes), 'none' (run alone), or the kind to look for.")
  flags.DEFINE_list('local_device_ids', None, 'Multi-process runs: the accelerators of this host '
                    'this process uses, e.g. 0 (one process per GPU); default: all of them.')
  flags.mark_flags_as_required(['config', 'workdir'])


def main(argv: list[str]) -> None:
  del argv  # cli.run refuses any.
  config = cli.parsed_config()
  # Imported once the flags are parsed: --help and flag mistakes answer without loading JAX.
  from cnn_jax.errors import UserError  # pylint: disable=g-import-not-at-top
  from cnn_jax.runtime import distributed, signals  # pylint: disable=g-import-not-at-top
  from cnn_jax.training import train  # pylint: disable=g-import-not-at-top
  args = flags.FLAGS
  local_devices = args.local_device_ids
  if local_devices and not all(d.isdigit() for d in local_devices):
    raise UserError(f'--local_device_ids={",".join(local_devices)}: give device numbers, e.g. 0 '
                    'or 0,1')
  distributed.initialize(args.coordinator_address, args.num_processes, args.process_id,
                         args.cluster, [int(d) for d in local_devices or []] or None)
  try:
    train.train_and_evaluate(config, flags.FLAGS.workdir)
  except signals.TrainingInterrupted as stopped:
    print(stopped, file=sys.stderr)
    sys.exit(128 + stopped.signum)  # The shell's convention for "ended by signal N".


if __name__ == '__main__':
  define_flags()
  cli.run(main)
