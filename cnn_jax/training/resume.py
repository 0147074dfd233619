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
  """Restores every member at the newest step all of them saved intact (dropping any newer
  member checkpoint, and saying which damaged one it skipped), or returns `state` as it is if none
  saved; returns (state, each one's progress).

  Raises:
    UserError: a checkpoint of another model, optimizer or dataset, members without a common
      step, or no intact checkpoint.
  """
  if all(m.latest_step() is None for m in managers):
    return state, [{}] * len(managers)
  common = set.intersection(*(set(m.all_steps()) for m in managers))
  if not common:
    raise UserError(f'The members\' checkpoints in {os.path.dirname(trainee.workdirs[0])} have '
                    'no step in common; use a new --workdir.')
  for step in sorted(common, reverse=True):  # The newest step every member has intact.
    try:
      restored = [_restore_member(manager, step, template, workdir, config)
                  for manager, template, workdir, config in zip(
                      managers, trainee.split(state), trainee.workdirs, trainee.configs)]
    except checkpoint.DamagedCheckpoint as damaged:
      text = str(damaged)
      distributed.log(f'{text[0].upper()}{text[1:]}; resuming from an earlier one.')
      continue
    for manager in managers:
      for newer in [s for s in manager.all_steps() if s > step]:
        # Damaged, or saved after a member that did not get there: redo those steps.
        manager.delete(newer)
    changes = restored[0][2]  # Every member's config changed alike.
    distributed.log(f'Resuming from the checkpoint at step {step:,}'
                    + (' with changed settings: ' + '; '.join(changes.values()) if changes else '')
                    + '.')
    return trainee.join([s for s, _, _ in restored]), [p for _, p, _ in restored]
  raise UserError(f'No checkpoint in {", ".join(trainee.workdirs)} can be read whole (see the '
                  'lines above). Move its checkpoints/ directory aside to train it from the start, '
                  'or use a new --workdir.')


def _restore_member(manager, step: int, template, workdir: str, config) -> tuple[Any, dict, dict]:
  """Restores checkpoint `step` onto `template`'s structure, or refuses with the config diff;
  returns (state, progress, the settings changed since it was saved: {key: 'key: old → new'}).

  Raises:
    checkpoint.DamagedCheckpoint: the checkpoint cannot be read whole.
  """
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
  return state, progress, changes
