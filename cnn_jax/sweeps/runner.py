"""What `python -m cnn_jax.sweep` does once its flags are parsed: check the swept space, open the
study, run trials (alone, several in one population, or in worker processes) and write the
results. See `cnn_jax/sweep.py` for the command and its flags.
"""

import ast
import contextlib
import dataclasses
import json
import os
import subprocess
import sys
import time

import optuna

from cnn_jax import cli
from cnn_jax.errors import UserError
from cnn_jax.runtime import signals, workdir_lock, writers
from cnn_jax.runtime.writers import read_metrics
from cnn_jax.sweeps import leaderboard, space, study as studies
from cnn_jax.sweeps.leaderboard import SWEEP_FILE
from cnn_jax.serving import inference
from cnn_jax.training import population, train
from cnn_jax.training.validation import config_problems


# Set in the environment of the worker processes a sweep starts: the sweep's pid, so that they
# end with it.
PARENT_ENV = 'CNN_JAX_SWEEP_PARENT'


@dataclasses.dataclass(frozen=True)
class Sweep:
  """The sweep command's settings (its flags; see cnn_jax/sweep.py for each)."""
  workdir: str
  config_path: str
  sweep: tuple[str, ...]
  sampler: str
  trials: int
  workers: int
  pruner: str
  pruner_startup_trials: int
  storage: str | None
  test_split: str | None
  population: int
  worker: bool


def run_trial(trial, base_config, params, sweep_dir: str, test_split: str | None) -> float:
  """Trains one trial in its own workdir; returns its best eval accuracy.

  Raises:
    optuna.TrialPruned: the pruner stopped it at an evaluation.
  """
  values = {p.key: space.suggest(trial, p) for p in params}
  config = space.apply(base_config, values)
  config.progress_bar = True  # Into `_Progress` (no terminal): a plain line per train log.
  number = trial.user_attrs.get('retry_of', trial.number)
  workdir = trial.user_attrs.get('workdir') or os.path.join(sweep_dir, 'trials', f'{number:04d}')
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
    with open(os.path.join(workdir, 'train.log'), 'a', encoding='utf-8') as log:
      progress = _Progress(log, sys.stdout, f'trial {number}: ')
      # Both streams: the loop's bar (stderr) sees no terminal and logs plain lines instead.
      with contextlib.redirect_stdout(progress), contextlib.redirect_stderr(progress):
        train.train_and_evaluate(config, workdir, on_eval)
  finally:
    trial.set_user_attr('seconds', _training_seconds(workdir, time.time() - started))
  return _record_finished(trial, workdir, test_split)


class _Progress:
  """What a trial prints: all of it into its train.log, and its progress lines ('step ...') to
  the console too, prefixed with the trial, so a sweep shows how each trial is doing as it
  trains (from several workers, their lines interleave, each saying whose it is)."""

  def __init__(self, log, console, prefix: str):
    self._log, self._console, self._prefix, self._pending = log, console, prefix, ''

  def write(self, text: str) -> int:
    self._log.write(text)
    self._pending += text
    *lines, self._pending = self._pending.split('\n')
    for line in lines:
      if line.startswith('step '):
        self._console.write(f'{self._prefix}{line}\n')
    return len(text)

  def flush(self) -> None:
    self._log.flush()
    self._console.flush()

  def isatty(self) -> bool:
    return False


def _training_seconds(workdir: str, this_run: float) -> float:
  """A trial's training time, all its runs together (a resumed trial's metrics carry the time
  trained before); `this_run` where it logged nothing."""
  times = [r['time'] for r in read_metrics(workdir) if 'time' in r]
  return round(max(times) if times else this_run, 1)


def _record_finished(trial, workdir: str, test_split: str | None) -> float:
  """Stores a finished trial's steps, final and test accuracy (the test split's, recorded at the
  end of training, or --test_split's on the best checkpoint); returns its best eval accuracy."""
  records = read_metrics(workdir)
  evals = [r for r in records if r['split'] == 'eval']
  trial.set_user_attr('steps', evals[-1]['step'])
  trial.set_user_attr('final_accuracy', evals[-1]['accuracy'])
  tests = [r for r in records if r['split'] == 'test']
  if tests:
    trial.set_user_attr('test_accuracy', tests[-1]['accuracy'])
  if test_split:
    trial.set_user_attr('test_accuracy',
                        inference.evaluate_workdir(workdir, 'best', test_split)['accuracy'])
  best = max(r['accuracy'] for r in evals)
  results = {'best_eval_accuracy': best, 'final_eval_accuracy': evals[-1]['accuracy']}
  if 'test_accuracy' in trial.user_attrs:
    results['test_accuracy'] = trial.user_attrs['test_accuracy']
  swept = json.loads(trial.user_attrs.get('values', '{}'))  # {key: repr(value)}
  writers.write_hparams(workdir, {k: ast.literal_eval(v) for k, v in swept.items()}, results)
  return best


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
        trial.set_user_attr('status', _reason(e))
        study.tell(trial, state=optuna.trial.TrialState.FAIL)
      print(f'trials {[t.number for t in trials]}: failed: {_reason(e)}', flush=True)
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
      trial.set_user_attr('status', _reason(e))
      study.tell(trial, state=optuna.trial.TrialState.FAIL)
      print(f'trial {trial.number}: failed: {_reason(e)}', flush=True)
      continue
    except signals.TrainingInterrupted as stopped:
      stopped.trial = trial.number
      raise  # Left RUNNING: the next run of the sweep resumes it from its checkpoint.
    study.tell(trial, value)
    print(f'trial {trial.number}: best eval accuracy {value:.2%} '
          f'({trial.user_attrs.get("values")})', flush=True)


def swept_params(sweep_flags: list[str], config_path: str):
  """Returns the Params of --sweep, or of the config file's get_sweep() if none is given."""
  texts = list(sweep_flags)
  if not texts:
    module = cli.config_module(config_path)
    if hasattr(module, 'get_sweep'):
      texts = list(module.get_sweep())
  if not texts:
    raise UserError("nothing to sweep: give --sweep 'KEY=SPEC' (repeatable) or a get_sweep() "
                    'in the config file that returns such strings.')
  return [space.parse(text) for text in texts]


def check_combinations(config, params, sampler: str) -> None:
  """Checks the config of every grid point (else every value and range end) before any trial.

  In a grid, a point whose config is invalid is named here and fails as a trial of its own, with
  its reason, while the other points run; a sweep of nothing but invalid points, or a value or
  range end the samplers would draw from, is refused.

  Raises:
    UserError: as above.
  """
  space.check(config, params)
  if sampler == 'grid':
    points = [space.values_of(params, point) for point in space.grid(params)]
  else:  # Ranges cannot be enumerated: try every listed value and both ends of every range.
    points = [{p.key: value} for p in params
              for value in (p.values if p.kind == 'choice' else (p.low, p.high))]
  invalid = [(point, problems) for point in points
             if (problems := config_problems(space.apply(config, point)))]
  described = '\n'.join(f'  {point}: ' + '; '.join(problems) for point, problems in invalid)
  if invalid and (sampler != 'grid' or len(invalid) == len(points)):
    raise UserError(f'{"every" if len(invalid) == len(points) else "a"} sweep point gives an '
                    f'invalid config:\n{described}')
  if invalid:
    print(f'{len(invalid)} of {len(points)} grid points give an invalid config; they will be '
          f'recorded as failed trials:\n{described}', flush=True)


def _reason(error: UserError) -> str:
  """A failed trial's reason on one line (the leaderboard's status)."""
  return ' '.join(line.strip(' -') for line in str(error).splitlines() if line.strip())


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


def same_sweep(workdir: str, definition: dict) -> None:
  """Records the sweep's definition in its workdir, or refuses a workdir that holds another.

  The search space as written ('search_space') is for reading only: sweeps recorded without it
  continue."""
  path = os.path.join(workdir, SWEEP_FILE)
  if os.path.exists(path):
    with open(path, encoding='utf-8') as f:
      saved = json.load(f)
    identity = lambda d: {k: v for k, v in d.items() if k != 'search_space'}
    if identity(saved) != identity(definition):
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
    for name, problem in leaderboard.optuna_figures(study, params, workdir).items():
      if problem:
        print(f'{name}: not drawn ({problem}).', flush=True)
    print(f'\nBest: trial {finished[0]["trial"]} with eval accuracy '
          f'{finished[0]["best_eval_accuracy"]:.2%}, in {finished[0]["workdir"]}; its config is '
          f'{os.path.join(workdir, "best_config.py")}.')
  return rows


def run(config, sweep: Sweep, argv: list[str]) -> None:
  """Runs `sweep` of `config` to the end (or, as a worker, runs trials until none is left).

  `argv` is the command line, which worker processes (sweep.workers > 1) are started with. The
  sweep (not its workers, here or on other machines) holds its workdir for its lifetime.

  Raises:
    UserError: a mistake in the sweep, or its workdir in use by another sweep.
  """
  with workdir_lock.held(sweep.workdir, enabled=not sweep.worker):
    _run(config, sweep, argv)


def _wait_for(workers: list, stop: signals.StopRequest) -> list[int]:
  """Waits for the worker processes to end, passing on a stop signal the sweep receives (each
  worker then saves its trial's checkpoint and ends); returns their exit codes."""
  forwarded = False
  while any(worker.poll() is None for worker in workers):
    if stop.requested and not forwarded:
      for worker in workers:
        if worker.poll() is None:
          worker.send_signal(stop.signum)
      forwarded = True
    time.sleep(0.2)
  return [worker.returncode for worker in workers]


def _run(config, sweep: Sweep, argv: list[str]) -> None:
  """`run` once the workdir is this sweep's."""
  params = swept_params(sweep.sweep, sweep.config_path)
  check_combinations(config, params, sweep.sampler)
  if sweep.population > 1:
    check_population(params, sweep.pruner)
  same_sweep(sweep.workdir, {'config': json.loads(config.to_json_best_effort()),
                             'sweep': [repr(p) for p in params],
                             'search_space': [p.text for p in params], 'sampler': sweep.sampler,
                             'trials': sweep.trials if sweep.sampler != 'grid' else None})
  if sweep.worker and os.environ.get(PARENT_ENV):  # Started by a sweep on this machine.
    signals.stop_with_parent(int(os.environ[PARENT_ENV]))
  study = studies.open_study(sweep.workdir, sweep.storage, sweep.sampler, sweep.pruner,
                             sweep.pruner_startup_trials, config.seed)
  if not sweep.worker:
    studies.plan(study, params, sweep.sampler)
    if not sweep.storage and (retried := studies.recover_interrupted(study)):
      print(f'Resuming {retried} interrupted trial(s) from their checkpoints.', flush=True)
    if sweep.workers > 1:
      # Workers share the machine's accelerators: each allocates what it uses, instead of
      # the 75% of a GPU's memory JAX takes by default (unless the user chose otherwise).
      env = {'XLA_PYTHON_CLIENT_PREALLOCATE': 'false', **os.environ,
             PARENT_ENV: str(os.getpid())}
      workers = [subprocess.Popen([sys.executable, '-m', 'cnn_jax.sweep', *argv[1:],
                                   '--worker'], env=env) for _ in range(sweep.workers)]
      with signals.StopRequest() as stop:  # A stop signal goes on to the workers.
        codes = _wait_for(workers, stop)
      if stop.requested:
        raise signals.SweepInterrupted(stop.signum, len(workers))
      if any(codes):
        raise UserError('a worker failed; its messages are above. Re-run to continue the sweep.')
      write_results(study, config, params, sweep.workdir)
      return
  run_worker(study, config, params, sweep.workdir, sweep.sampler, sweep.trials, sweep.test_split,
             sweep.population)
  if not sweep.worker:
    write_results(study, config, params, sweep.workdir)

