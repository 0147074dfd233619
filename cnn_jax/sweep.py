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
import json
import os
import subprocess
import sys
import time

from absl import flags
from ml_collections import config_flags

from cnn_jax import cli
from cnn_jax.errors import UserError

SAMPLERS = ('grid', 'random', 'tpe')
PRUNERS = ('none', 'median', 'halving')
STUDY_NAME = 'cnn_jax'
SWEEP_FILE = 'sweep.json'


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
                       '(cnn_jax.population) when every swept key is a per-member value: seed, '
                       'learning rate, weight decay, label smoothing, dropout.', lower_bound=1)
  flags.DEFINE_bool('worker', False, 'Internal: run trials only (started by the sweep itself, or '
                    'by hand on other machines with a shared --storage).')
  flags.mark_flags_as_required(['config', 'workdir'])


def open_study(workdir: str, storage_url: str | None, sampler: str, pruner: str,
               startup_trials: int, seed: int):
  """Creates or loads the sweep's Optuna study (maximising the eval accuracy)."""
  import optuna  # pylint: disable=g-import-not-at-top
  from optuna.storages import journal  # pylint: disable=g-import-not-at-top
  optuna.logging.set_verbosity(optuna.logging.WARNING)
  if storage_url:
    try:
      storage = optuna.storages.RDBStorage(
          storage_url, heartbeat_interval=60, grace_period=180,
          failed_trial_callback=optuna.storages.RetryFailedTrialCallback(max_retry=2))
    except ImportError:
      raise UserError(f'--storage {storage_url}: the database driver is not installed; for '
                      "PostgreSQL: pip install -e '.[postgres]'") from None
    except Exception as e:  # pylint: disable=broad-except  # SQLAlchemy's errors: a bad URL.
      raise UserError(f'--storage {storage_url}: cannot open the study database: '
                      f'{str(e).splitlines()[0]}') from None
  else:
    os.makedirs(workdir, exist_ok=True)
    storage = optuna.storages.JournalStorage(journal.JournalFileBackend(
        os.path.join(workdir, 'study.journal')))
  samplers = {'grid': optuna.samplers.RandomSampler(seed=seed),  # Grid points are enqueued.
              'random': optuna.samplers.RandomSampler(seed=seed),
              'tpe': optuna.samplers.TPESampler(seed=seed)}
  pruners = {'none': optuna.pruners.NopPruner(),
             'median': optuna.pruners.MedianPruner(n_startup_trials=startup_trials),
             'halving': optuna.pruners.SuccessiveHalvingPruner()}
  return optuna.create_study(study_name=STUDY_NAME, storage=storage, direction='maximize',
                             sampler=samplers[sampler], pruner=pruners[pruner],
                             load_if_exists=True)


def plan(study, params, sampler: str) -> None:
  """Enqueues every grid point once (re-running the sweep enqueues nothing new)."""
  from cnn_jax import sweep_space  # pylint: disable=g-import-not-at-top
  if sampler == 'grid':
    for point in sweep_space.grid(params):
      study.enqueue_trial(point, skip_if_exists=True)


def recover_interrupted(study) -> int:
  """Re-queues trials left RUNNING by a killed sweep so they resume from their checkpoints.

  Only for the file study of a sweep on one machine, whose workers are all started by this
  command: when it starts, no trial can really be running. (A shared --storage relies on
  Optuna's heartbeat instead, which retries the trials of a worker that stopped beating.)
  """
  import optuna  # pylint: disable=g-import-not-at-top
  stale = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,))
  for trial in stale:
    study._storage.set_trial_user_attr(trial._trial_id, 'status', 'interrupted, retried')  # pylint: disable=protected-access
    study._storage.set_trial_state_values(trial._trial_id, optuna.trial.TrialState.FAIL)  # pylint: disable=protected-access
    study.enqueue_trial(trial.params, user_attrs={'workdir': trial.user_attrs.get('workdir'),
                                                  'retry_of': trial.number})
  return len(stale)


def _claim_waiting(study):
  """Atomically takes one queued trial (two workers never get the same one), or None."""
  import optuna  # pylint: disable=g-import-not-at-top
  storage = study._storage  # pylint: disable=protected-access
  for frozen in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.WAITING,)):
    # False when another worker changed it first: the storage settles the race.
    if storage.set_trial_state_values(frozen._trial_id, optuna.trial.TrialState.RUNNING):  # pylint: disable=protected-access
      return optuna.trial.Trial(study, frozen._trial_id)  # pylint: disable=protected-access
  return None


def next_trial(study, sampler: str, num_trials: int):
  """The next trial to run: a queued one, else (random, tpe) a new one while under `num_trials`."""
  import optuna  # pylint: disable=g-import-not-at-top
  trial = _claim_waiting(study)
  if trial is not None or sampler == 'grid':
    return trial
  states = optuna.trial.TrialState
  started = study.get_trials(deepcopy=False, states=(states.COMPLETE, states.PRUNED,
                                                     states.RUNNING, states.WAITING))
  return study.ask() if len(started) < num_trials else None


def run_trial(trial, base_config, params, sweep_dir: str, test_split: str | None) -> float:
  """Trains one trial in its own workdir; returns its best eval accuracy.

  Raises:
    optuna.TrialPruned: the pruner stopped it at an evaluation.
  """
  import optuna  # pylint: disable=g-import-not-at-top
  from cnn_jax import sweep_space, train  # pylint: disable=g-import-not-at-top
  values = {p.key: sweep_space.suggest(trial, p) for p in params}
  config = sweep_space.apply(base_config, values)
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
  from cnn_jax import evaluate  # pylint: disable=g-import-not-at-top
  from cnn_jax.metric_writers import read_metrics  # pylint: disable=g-import-not-at-top
  evals = [r for r in read_metrics(workdir) if r['split'] == 'eval']
  trial.set_user_attr('steps', evals[-1]['step'])
  trial.set_user_attr('final_accuracy', evals[-1]['accuracy'])
  if test_split:
    trial.set_user_attr('test_accuracy',
                        evaluate.evaluate_workdir(workdir, 'best', test_split)['accuracy'])
  return max(r['accuracy'] for r in evals)


def run_population(trials, base_config, params, sweep_dir: str,
                   test_split: str | None) -> list[float]:
  """Trains `trials` as one population, each member in its trial's workdir; returns each one's
  best eval accuracy. Members share the base config's batch order and, unless swept, its seed."""
  from cnn_jax import population, sweep_space, train  # pylint: disable=g-import-not-at-top
  values = [{p.key: sweep_space.coerce(base_config, p.key, sweep_space.suggest(trial, p))
             for p in params} for trial in trials]
  config = sweep_space.apply(base_config, {})
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
      population.train_population(config, population_dir, workdirs)
  finally:
    for trial in trials:  # The population's time, shared by its members.
      trial.set_user_attr('seconds', round(time.time() - started, 1))
  return [_record_finished(trial, w, test_split) for trial, w in zip(trials, workdirs)]


def run_worker(study, base_config, params, sweep_dir: str, sampler: str, num_trials: int,
               test_split: str | None, population_size: int = 1) -> None:
  """Runs trials until the plan is done; a failing trial is recorded and the next one starts."""
  import optuna  # pylint: disable=g-import-not-at-top
  from cnn_jax import signals  # pylint: disable=g-import-not-at-top
  while population_size > 1:
    trials = []
    while len(trials) < population_size and (t := next_trial(study, sampler, num_trials)):
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
  while (trial := next_trial(study, sampler, num_trials)) is not None:
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
  import importlib.util  # pylint: disable=g-import-not-at-top
  from cnn_jax import sweep_space  # pylint: disable=g-import-not-at-top
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
  return [sweep_space.parse(text) for text in texts]


def check_combinations(config, params, sampler: str) -> None:
  """Validates the config of every grid point (else every value and range end) before any trial."""
  from cnn_jax import sweep_space  # pylint: disable=g-import-not-at-top
  from cnn_jax.config_validation import config_problems  # pylint: disable=g-import-not-at-top
  sweep_space.check(config, params)
  if sampler == 'grid':
    points = [sweep_space.values_of(params, point) for point in sweep_space.grid(params)]
  else:  # Ranges cannot be enumerated: try every listed value and both ends of every range.
    points = [{p.key: value} for p in params
              for value in (p.values if p.kind == 'choice' else (p.low, p.high))]
  for point in points:
    problems = config_problems(sweep_space.apply(config, point))
    if problems:
      raise UserError(f'the sweep point {point} gives an invalid config:\n  - '
                      + '\n  - '.join(problems))


def check_population(params, pruner: str) -> None:
  """Refuses --population for a sweep whose trials cannot share one program."""
  from cnn_jax.population import VARIED  # pylint: disable=g-import-not-at-top
  per_member = tuple(VARIED.values())
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
  from cnn_jax import leaderboard  # pylint: disable=g-import-not-at-top
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
  config = cli.load_config()
  params = swept_params(args.sweep)
  check_combinations(config, params, args.sampler)
  if args.population > 1:
    check_population(params, args.pruner)
  _same_sweep(args.workdir, {'config': json.loads(config.to_json_best_effort()),
                             'sweep': [repr(p) for p in params], 'sampler': args.sampler,
                             'trials': args.trials if args.sampler != 'grid' else None})
  study = open_study(args.workdir, args.storage, args.sampler, args.pruner,
                     args.pruner_startup_trials, config.seed)
  if not args.worker:
    plan(study, params, args.sampler)
    if not args.storage and (retried := recover_interrupted(study)):
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
