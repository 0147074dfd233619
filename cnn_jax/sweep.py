"""Hyperparameter sweeps on Optuna: `python -m cnn_jax.sweep --config C --workdir W --sweep ...`.

    python -m cnn_jax.sweep --config configs/digits.py --workdir runs/digits_sweep \\
        --sweep 'model.features=[8,16,32]' --sweep 'model.kernel_size=[3,5]'
    python -m cnn_jax.sweep ... --sweep 'optimizer.learning_rate=loguniform(1e-4,1e-1)' \\
        --sampler tpe --trials 20 --workers 2 --pruner median

Each trial trains in W/trials/NNNN (a normal workdir: evaluate, predict, report and resume work
on it). The study lives in W/study.journal (or --storage, e.g. a PostgreSQL URL, for workers on
several machines). Re-running the command continues the sweep: finished trials are kept and an
interrupted trial resumes from its checkpoint. At the end: a leaderboard (printed, CSV, Markdown),
the best config as a runnable file, and the metric against each swept value.
"""

import contextlib
import importlib.util
import json
import os
import subprocess
import sys
import time

import optuna
from absl import flags
from ml_collections import config_flags

from cnn_jax import cli
from cnn_jax.errors import UserError
from cnn_jax.runtime import signals
from cnn_jax.runtime.writers import read_metrics
from cnn_jax.sweeps import leaderboard, space, study as studies
from cnn_jax.sweeps.leaderboard import SWEEP_FILE
from cnn_jax.sweeps.study import PRUNERS, SAMPLERS
from cnn_jax.training import inference, population, train
from cnn_jax.training.validation import config_problems



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
                       'value: seed, '
                       'learning rate, weight decay, label smoothing, dropout.', lower_bound=1)
  flags.DEFINE_bool('worker', False, 'Internal: run trials only (started by the sweep itself, or '
                    'by hand on other machines with a shared --storage).')
  flags.mark_flags_as_required(['config', 'workdir'])


def run_trial(trial, base_config, params, sweep_dir: str, test_split: str | None) -> float:
  """Trains one trial in its own workdir; returns its best eval accuracy.

  Raises:
    optuna.TrialPruned: the pruner stopped it at an evaluation.
  """
  values = {p.key: space.suggest(trial, p) for p in params}
  config = space.apply(base_config, values)
  config.progress_bar = False
  workdir = trial.user_attrs.get('workdir') or os.path.join(sweep_dir, 'trials',
                                                             f'{trial.number:04d}')
  trial.set_user_attr('workdir', workdir)
  trial.set_user_attr('values', json.dumps({k: repr(v) for k, v in values.items()}))
  started = time.time()

  def on_eval(step, metrics):
    trial.report(metrics['accuracy'], step)
    if trial.should_prune():
      trial.set_user_attr('steps', step)
      raise optuna.TrialPruned(f'pruned at step {step}')

  os.makedirs(workdir, exist_ok=True)
  try:
    with open(os.path.join(workdir, 'train.log'), 'a', encoding='utf-8') as log, \
        contextlib.redirect_stdout(log):
      train.train_and_evaluate(config, workdir, on_eval)
  finally:
    trial.set_user_attr('seconds', round(time.time() - started, 1))
  return _record_finished(trial, workdir, test_split)


def _record_finished(trial, workdir: str, test_split: str | None) -> float:
  """Stores a finished trial's steps, final and test accuracy; returns its best eval accuracy."""
  evals = [r for r in read_metrics(workdir) if r['split'] == 'eval']
  trial.set_user_attr('steps', evals[-1]['step'])
  trial.set_user_attr('final_accuracy', evals[-1]['accuracy'])
  if test_split:
    trial.set_user_attr('test_accuracy',
                        inference.evaluate_workdir(workdir, 'best', test_split)['accuracy'])
  return max(r['accuracy'] for r in evals)


def run_population(trials, base_config, params, sweep_dir: str,
                   test_split: str | None) -> list[float]:
  """Trains `trials` as one population, each member in its trial's workdir; returns each one's
  best eval accuracy. Members share the base config's batch order and, unless swept, its seed."""
  values = [{p.key: space.coerce(base_config, p.key, space.suggest(trial, p))
             for p in params} for trial in trials]
  config = space.apply(base_config, {})
  config.progress_bar = False
  config.population.size = len(trials)
  config.population.seeds = tuple(v.get('seed', base_config.seed) for v in values)
  for field, key in population.VARIED.items():
    if key in values[0] and key != 'seed':
      config.population[field] = tuple(v[key] for v in values)
  workdirs = [trial.user_attrs.get('workdir') or os.path.join(sweep_dir, 'trials',
                                                               f'{trial.number:04d}')
              for trial in trials]
  for trial, workdir, trial_values in zip(trials, workdirs, values):
    trial.set_user_attr('workdir', workdir)
    trial.set_user_attr('values', json.dumps({k: repr(v) for k, v in trial_values.items()}))
  population_dir = os.path.join(sweep_dir, 'populations', f'{trials[0].number:04d}')
  os.makedirs(population_dir, exist_ok=True)
  started = time.time()
  try:
    with open(os.path.join(population_dir, 'train.log'), 'a', encoding='utf-8') as log, \
        contextlib.redirect_stdout(log):
      train.train_and_evaluate(config, population_dir, member_workdirs=workdirs)
  finally:
    for trial in trials:  # The population's time, shared by its members.
      trial.set_user_attr('seconds', round(time.time() - started, 1))
  return [_record_finished(trial, w, test_split) for trial, w in zip(trials, workdirs)]


def run_worker(study, base_config, params, sweep_dir: str, sampler: str, num_trials: int,
               test_split: str | None, population_size: int = 1) -> None:
  """Runs trials until the plan is done; a failing trial is recorded and the next one starts."""
  while population_size > 1:
    trials = []
    while len(trials) < population_size and (t := studies.next_trial(study, sampler, num_trials)):
      trials.append(t)
    if not trials:
      return
    try:
      accuracies = run_population(trials, base_config, params, sweep_dir, test_split)
    except UserError as e:
      for trial in trials:
        trial.set_user_attr('status', str(e).splitlines()[0])
        study.tell(trial, state=optuna.trial.TrialState.FAIL)
      print(f'trials {[t.number for t in trials]}: failed: {str(e).splitlines()[0]}', flush=True)
      continue
    for trial, value in zip(trials, accuracies):
      study.tell(trial, value)
      print(f'trial {trial.number}: best eval accuracy {value:.2%} '
            f'({trial.user_attrs.get("values")})', flush=True)
  while (trial := studies.next_trial(study, sampler, num_trials)) is not None:
    try:
      value = run_trial(trial, base_config, params, sweep_dir, test_split)
    except optuna.TrialPruned as pruned:
      trial.set_user_attr('status', str(pruned))
      study.tell(trial, state=optuna.trial.TrialState.PRUNED)
      print(f'trial {trial.number}: {pruned}', flush=True)
      continue
    except UserError as e:  # This combination cannot train (e.g. a kernel too large).
      trial.set_user_attr('status', str(e).splitlines()[0])
      study.tell(trial, state=optuna.trial.TrialState.FAIL)
      print(f'trial {trial.number}: failed: {str(e).splitlines()[0]}', flush=True)
      continue
    except signals.TrainingInterrupted:
      raise  # Left RUNNING: the next run of the sweep resumes it from its checkpoint.
    study.tell(trial, value)
    print(f'trial {trial.number}: best eval accuracy {value:.2%} '
          f'({trial.user_attrs.get("values")})', flush=True)


def swept_params(sweep_flags: list[str]):
  """Returns the Params of --sweep, or of the config file's get_sweep() if none is given."""
  texts = list(sweep_flags)
  if not texts:
    path = config_flags.get_config_filename(flags.FLAGS['config']).split(':')[0]
    spec = importlib.util.spec_from_file_location('_swept_config', path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    if hasattr(module, 'get_sweep'):
      texts = list(module.get_sweep())
  if not texts:
    raise UserError("nothing to sweep: give --sweep 'KEY=SPEC' (repeatable) or a get_sweep() "
                    'in the config file that returns such strings.')
  return [space.parse(text) for text in texts]


def check_combinations(config, params, sampler: str) -> None:
  """Validates the config of every grid point (else every value and range end) before any trial."""
  space.check(config, params)
  if sampler == 'grid':
    points = [space.values_of(params, point) for point in space.grid(params)]
  else:  # Ranges cannot be enumerated: try every listed value and both ends of every range.
    points = [{p.key: value} for p in params
              for value in (p.values if p.kind == 'choice' else (p.low, p.high))]
  for point in points:
    problems = config_problems(space.apply(config, point))
    if problems:
      raise UserError(f'the sweep point {point} gives an invalid config:\n  - '
                      + '\n  - '.join(problems))


def check_population(params, pruner: str) -> None:
  """Refuses --population for a sweep whose trials cannot share one program."""
  per_member = tuple(population.VARIED.values())
  others = [p.key for p in params if p.key not in per_member]
  if others:
    raise UserError(f'--population trains trials together only when they differ in '
                    f'{", ".join(per_member)}; this sweep also varies {", ".join(others)}. '
                    'Drop --population, or sweep those keys in separate sweeps.')
  if pruner != 'none':
    raise UserError('--population cannot prune single members; use --pruner none with it.')


def _same_sweep(workdir: str, definition: dict) -> None:
  path = os.path.join(workdir, SWEEP_FILE)
  if os.path.exists(path):
    with open(path, encoding='utf-8') as f:
      saved = json.load(f)
    if saved != definition:
      raise UserError(f'{workdir} holds another sweep ({saved}); use a new --workdir, or the same '
                      f'--config, --sweep, --sampler and --trials to continue it.')
  else:
    os.makedirs(workdir, exist_ok=True)
    with open(path, 'w', encoding='utf-8') as f:
      json.dump(definition, f, indent=2)


def write_results(study, config, params, workdir: str) -> list[dict]:
  """Prints the leaderboard and writes it (CSV, Markdown), the best config and the plot."""
  rows = leaderboard.trial_rows(study, params)
  leaderboard.write_csv(rows, params, os.path.join(workdir, 'leaderboard.csv'))
  table = leaderboard.to_markdown(rows, params)
  with open(os.path.join(workdir, 'leaderboard.md'), 'w', encoding='utf-8') as f:
    f.write(table + '\n')
  print(table)
  finished = [r for r in rows if r['best_eval_accuracy'] is not None]
  if finished:
    leaderboard.write_best_config(finished[0], config, params,
                                  os.path.join(workdir, 'best_config.py'))
    leaderboard.plot(rows, params, os.path.join(workdir, 'sweep.png'))
    print(f'\nBest: trial {finished[0]["trial"]} with eval accuracy '
          f'{finished[0]["best_eval_accuracy"]:.2%}, in {finished[0]["workdir"]}; its config is '
          f'{os.path.join(workdir, "best_config.py")}.')
  return rows


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise UserError(f'unexpected arguments {argv[1:]}')
  args = flags.FLAGS
  config = cli.parsed_config()
  params = swept_params(args.sweep)
  check_combinations(config, params, args.sampler)
  if args.population > 1:
    check_population(params, args.pruner)
  _same_sweep(args.workdir, {'config': json.loads(config.to_json_best_effort()),
                             'sweep': [repr(p) for p in params], 'sampler': args.sampler,
                             'trials': args.trials if args.sampler != 'grid' else None})
  study = studies.open_study(args.workdir, args.storage, args.sampler, args.pruner,
                     args.pruner_startup_trials, config.seed)
  if not args.worker:
    studies.plan(study, params, args.sampler)
    if not args.storage and (retried := studies.recover_interrupted(study)):
      print(f'Resuming {retried} interrupted trial(s) from their checkpoints.', flush=True)
    if args.workers > 1:
      workers = [subprocess.Popen([sys.executable, '-m', 'cnn_jax.sweep', *sys.argv[1:],
                                   '--worker']) for _ in range(args.workers)]
      if any(worker.wait() for worker in workers):
        raise UserError('a worker failed; its messages are above. Re-run to continue the sweep.')
      write_results(study, config, params, args.workdir)
      return
  run_worker(study, config, params, args.workdir, args.sampler, args.trials, args.test_split,
             args.population)
  if not args.worker:
    write_results(study, config, params, args.workdir)


if __name__ == '__main__':
  define_flags()
  cli.run(main)
