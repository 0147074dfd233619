"""The sweep's Optuna study: storage, samplers and pruners, the planned grid, and handing out
trials to workers (each queued trial to exactly one worker; trials of a killed sweep again)."""

import os

import optuna
from optuna.storages import journal

from cnn_jax.errors import UserError
from cnn_jax.sweeps import space

STUDY_NAME = 'cnn_jax'


def open_study(workdir: str, storage_url: str | None, sampler: str, pruner: str,
               startup_trials: int, seed: int):
  """Creates or loads the sweep's Optuna study (maximising the eval accuracy)."""
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
  if sampler == 'grid':
    for point in space.grid(params):
      study.enqueue_trial(point, skip_if_exists=True)


def recover_interrupted(study) -> int:
  """Re-queues trials left RUNNING by a killed sweep so they resume from their checkpoints.

  Only for the file study of a sweep on one machine, whose workers are all started by this
  command: when it starts, no trial can really be running. (A shared --storage relies on
  Optuna's heartbeat instead, which retries the trials of a worker that stopped beating.)
  """
  stale = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,))
  for trial in stale:
    study._storage.set_trial_user_attr(trial._trial_id, 'status', 'interrupted, retried')  # pylint: disable=protected-access
    study._storage.set_trial_state_values(trial._trial_id, optuna.trial.TrialState.FAIL)  # pylint: disable=protected-access
    study.enqueue_trial(trial.params, user_attrs={
        'workdir': trial.user_attrs.get('workdir'),
        'retry_of': trial.user_attrs.get('retry_of', trial.number)})  # The first number.
  return len(stale)


def _claim_waiting(study):
  """Atomically takes one queued trial (two workers never get the same one), or None."""
  storage = study._storage  # pylint: disable=protected-access
  for frozen in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.WAITING,)):
    # False when another worker changed it first: the storage settles the race.
    if storage.set_trial_state_values(frozen._trial_id, optuna.trial.TrialState.RUNNING):  # pylint: disable=protected-access
      return optuna.trial.Trial(study, frozen._trial_id)  # pylint: disable=protected-access
  return None


def next_trial(study, sampler: str, num_trials: int):
  """The next trial to run: a queued one, else (random, tpe) a new one while under `num_trials`."""
  trial = _claim_waiting(study)
  if trial is not None or sampler == 'grid':
    return trial
  states = optuna.trial.TrialState
  started = study.get_trials(deepcopy=False, states=(states.COMPLETE, states.PRUNED,
                                                     states.RUNNING, states.WAITING))
  return study.ask() if len(started) < num_trials else None
