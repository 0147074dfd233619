"""Resume: a run's members restored from their newest common checkpoint, or refused, with the
settings that changed, where the saved state or record cannot be resumed."""

import os
from typing import Any

from cnn_jax.errors import UserError
from cnn_jax.runtime import distributed
from cnn_jax.training import checkpoint
from cnn_jax.training.loop import Trainee, step_of
from cnn_jax.training.workdir import config_differences, load_run_config, resumable


def restore(trainee: Trainee, managers: list, state) -> tuple[Any, list[dict]]:
  """Restores every member at the newest step all of them saved (dropping any newer member
  checkpoint), or returns `state` as it is if none saved; returns (state, each one's progress).

  Raises:
    UserError: a checkpoint of another model, optimizer or dataset, or members without a
      common step.
  """
  if all(m.latest_step() is None for m in managers):
    return state, [{}] * len(managers)
  common = set.intersection(*(set(m.all_steps()) for m in managers))
  if not common:
    raise UserError(f'The members\' checkpoints in {os.path.dirname(trainee.workdirs[0])} have '
                    'no step in common; use a new --workdir.')
  step = max(common)
  states, progress = [], []
  for manager, template, workdir, config in zip(managers, trainee.split(state),
                                                trainee.workdirs, trainee.configs):
    for newer in [s for s in manager.all_steps() if s > step]:
      manager.delete(newer)  # Saved after a member that did not get there: redo those steps.
    restored, member_progress = _restore_member(manager, step, template, workdir, config)
    states.append(restored)
    progress.append(member_progress)
  return trainee.join(states), progress


def _restore_member(manager, step: int, template, workdir: str, config):
  """Restores checkpoint `step` onto `template`'s structure, or refuses with the config diff."""
  saved = load_run_config(workdir)
  changes = config_differences(saved, config) if saved is not None else {}
  try:
    state, progress = checkpoint.restore(manager, step, template)
  except checkpoint.IncompatibleCheckpoint as e:
    raise UserError(
        f'{workdir} holds a checkpoint (step {step:,}) of a different model, optimizer or dataset, '
        'so this config cannot resume it. Changed settings:\n  '
        + '\n  '.join(changes.values() or ['(none recorded)'])
        + f'\nThe saved state differs: {e}.\nUse a new --workdir, or keep these settings.'
    ) from None
  fixed = [line for key, line in changes.items() if not resumable(key)]
  if fixed:
    raise UserError(
        f'{workdir} was trained to step {step:,} with other settings, which a resumed run cannot '
        'change (its config.json would no longer say how the model was trained):\n  '
        + '\n  '.join(fixed) + f'\nKeep them to resume, or start a new --workdir (add '
        f'--config.init_from={workdir} to begin from its weights). A run may change on resume '
        'only its length, its logging, evaluation and checkpoint cadence, and where and how it '
        'reads the data.')
  distributed.log(f'Resuming from the checkpoint at step {step:,}'
      + (' with changed settings: ' + '; '.join(changes.values()) if changes else '') + '.')
  return state, progress
