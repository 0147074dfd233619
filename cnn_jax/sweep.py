"""Hyperparameter sweeps on Optuna: `python -m cnn_jax.sweep --config C --workdir W --sweep ...`.

    python -m cnn_jax.sweep --config digits --workdir runs/digits_sweep \\
        --sweep 'model.features=[8,16,32]' --sweep 'model.kernel_size=[3,5]'
    python -m cnn_jax.sweep ... --sweep 'optimizer.learning_rate=loguniform(1e-4,1e-1)' \\
        --sampler tpe --trials 20 --workers 2 --pruner median

Each trial trains in W/trials/NNNN (a normal workdir: evaluate, predict, report and resume work
on it). The study lives in W/study.journal (or --storage, e.g. a PostgreSQL URL, for workers on
several machines). Re-running the command continues the sweep: finished trials are kept and an
interrupted trial resumes from its checkpoint. At the end: a leaderboard (printed, CSV, Markdown),
the best config as a runnable file, and the metric against each swept value.
"""

import os
import signal
import sys

from absl import flags
from ml_collections import config_flags

from cnn_jax import cli
from cnn_jax.sweeps.space import PRUNERS, SAMPLERS


def define_flags() -> None:
  """Defines this command's flags (only when it runs, so the module imports anywhere)."""
  config_flags.DEFINE_config_file('config', None, 'The config to vary.', lock_config=True)
  flags.DEFINE_string('workdir', None, 'Directory of the sweep (trials, study, results).')
  flags.DEFINE_multi_string('sweep', [], "KEY=SPEC, repeatable: 'model.features=[16,32,64]', "
                            "'optimizer.learning_rate=loguniform(1e-4,1e-1)', 'uniform(a,b)', "
                            "'int(a,b)'. Default: the config file's get_sweep(), if it has one.")
  flags.DEFINE_enum('sampler', 'grid', SAMPLERS, 'grid: every combination of the lists; random; '
                    'tpe: Bayesian (Optuna TPE).')
  flags.DEFINE_integer('trials', 10, 'Trials to run for random and tpe (a grid runs them all).',
                       lower_bound=1)
  flags.DEFINE_integer('workers', 1, 'Parallel worker processes on this machine.', lower_bound=1)
  flags.DEFINE_enum('pruner', 'none', PRUNERS, 'Stop unpromising trials early, judged at each '
                    'evaluation: median rule or successive halving.')
  flags.DEFINE_integer('pruner_startup_trials', 3, 'Trials that finish before any is pruned.',
                       lower_bound=0)
  flags.DEFINE_string('storage', None, 'Optuna storage URL (e.g. postgresql://user@host/db) '
                      'shared by workers on several machines; default: WORKDIR/study.journal.')
  flags.DEFINE_string('test_split', None, 'Also evaluate each finished trial on this split.')
  flags.DEFINE_integer('population', 1, 'Train up to this many trials at once as one population '
                       '(cnn_jax.training.population) when every swept key is a per-member '
                       'value: seed, learning rate, weight decay, label smoothing, dropout.',
                       lower_bound=1)
  flags.DEFINE_bool('worker', False, 'Internal: run trials only (started by the sweep itself, or '
                    'by hand on other machines with a shared --storage).')
  flags.mark_flags_as_required(['config', 'workdir'])


def main(argv: list[str]) -> None:
  del argv  # cli.run refuses any.
  config = cli.parsed_config()
  # Imported once the flags are parsed: --help and flag mistakes answer without loading JAX.
  from cnn_jax.runtime import signals  # pylint: disable=g-import-not-at-top
  from cnn_jax.sweeps import runner  # pylint: disable=g-import-not-at-top
  args = flags.FLAGS
  try:
    runner.run(config, runner.Sweep(
        args.workdir, config_flags.get_config_filename(args['config']), tuple(args.sweep),
        args.sampler, args.trials, args.workers, args.pruner, args.pruner_startup_trials,
        args.storage, args.test_split, args.population, args.worker), sys.argv)
  except signals.TrainingInterrupted as stopped:  # This process's trial saved its checkpoint.
    who = f'Sweep worker {os.getpid()}' if args.worker else 'Sweep'
    trial = f'trial {stopped.trial}' if stopped.trial is not None else 'its trials'
    print(f'{who}: {trial} stopped by {signal.Signals(stopped.signum).name} at step '
          f'{stopped.step:,}, its checkpoint saved. Re-run the sweep command to continue it.',
          file=sys.stderr, flush=True)
    sys.exit(128 + stopped.signum)
  except signals.SweepInterrupted as stopped:  # Every worker saved its trial (lines above).
    print(stopped, file=sys.stderr, flush=True)
    sys.exit(128 + stopped.signum)


if __name__ == '__main__':
  define_flags()
  cli.run(main)
