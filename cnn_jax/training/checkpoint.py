"""The workdir's checkpoints: orbax's CheckpointManager with the retention a researcher wants.

`workdir/checkpoints/<step>/` holds the whole train state (params, batch statistics, optimizer
state, step, rng) and a small JSON item with the loop's own progress (running train metrics since
the last log). Saves are asynchronous, so training goes on while the previous step is written.
Retention: the newest `keep_last` are kept, and so are the `keep_best` with the best validation
metric; the newest is never deleted in favour of a better one. orbax writes each save to a
temporary directory and renames it when complete, so a save cut short by a kill is never mistaken
for a checkpoint; its leftovers are removed the next time the workdir is opened.
"""

import contextlib
import errno
import functools
import json
import logging as logging_std
import os
import shutil
import sys
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from flax import traverse_util
from orbax.checkpoint import checkpoint_managers

from cnn_jax.errors import UserError

CHECKPOINT_DIR = 'checkpoints'
BEST_METRICS = {'accuracy': 'max', 'loss': 'min'}


def checkpoint_dir(workdir: str) -> str:
  """Returns the directory under `workdir` that holds its checkpoints."""
  return os.path.join(os.path.abspath(workdir), CHECKPOINT_DIR)


def open_manager(workdir: str, keep_last: int = 2, keep_best: int = 1,
                 best_metric: str = 'accuracy', read_only: bool = False) -> ocp.CheckpointManager:
  """Opens (creating if needed) the checkpoint manager of `workdir`.

  Args:
    workdir: the run's directory.
    keep_last: how many of the newest checkpoints to keep.
    keep_best: how many of the best checkpoints (by `best_metric` on the eval split) to keep.
    best_metric: 'accuracy' (higher is better) or 'loss' (lower is better).
    read_only: open for restoring only (evaluate, predict): nothing is written or deleted.
  """
  _quiet_orbax_errors()
  mode = BEST_METRICS[best_metric]
  policies = [checkpoint_managers.LatestN(keep_last)]
  if keep_best > 0:
    policies.append(checkpoint_managers.BestN(
        get_metric_fn=lambda metrics: metrics[best_metric], reverse=mode == 'min', n=keep_best,
        keep_checkpoints_without_metrics=False))  # Periodic saves fall to LatestN.
  # A read-only manager makes orbax warn that it turns saving off, which is what was asked for:
  # noise to a user of evaluate, predict or cnn_jax.load (the commands silence absl logging
  # anyway; the Python API does not).
  previous = logging.get_verbosity()
  logging.set_verbosity(logging.ERROR if read_only else previous)
  try:
    options = ocp.CheckpointManagerOptions(
        preservation_policy=checkpoint_managers.AnyPreservationPolicy(policies),
        best_fn=lambda metrics: metrics[best_metric], best_mode=mode,  # Metrics per step.
        cleanup_tmp_directories=not read_only, read_only=read_only, create=not read_only)
    return ocp.CheckpointManager(checkpoint_dir(workdir), options=options,
                                 item_handlers=_item_handlers())
  finally:
    logging.set_verbosity(previous)


class _NotFromOrbax(logging_std.Filter):
  def filter(self, record: logging_std.LogRecord) -> bool:
    return '/orbax/' not in record.pathname.replace(os.sep, '/')


@functools.cache
def _quiet_orbax_errors() -> None:
  """Drops orbax's own log records: a save that fails in its background threads logs the same
  traceback five times, then raises it where the loop waits for the save (`wait`, `save`), which
  reports it in a line (`DiskFull`) or with its traceback."""
  logging.get_absl_logger().addFilter(_NotFromOrbax())
  _drop_closed_loop_callbacks()


def _item_handlers() -> dict:
  # Named handlers (not just item names) let the manager read a checkpoint's metadata unrestored.
  return {'state': ocp.StandardCheckpointHandler(), 'progress': ocp.JsonCheckpointHandler()}


def save(manager: ocp.CheckpointManager, state: Any, progress: dict,
         eval_metrics: dict | None = None) -> None:
  """Starts an asynchronous save of `state` at its step; returns before the write finishes.

  Args:
    manager: from `open_manager`.
    state: the TrainState (its `step` names the checkpoint).
    progress: JSON-serialisable loop progress to restore with it.
    eval_metrics: the eval metrics at this step, if any: they rank the checkpoint for keep_best.
  """
  step = int(jax.device_get(state.step))
  # The write happens later, on another thread: snapshot `progress` now, or the caller's next
  # changes to it (the loop keeps adding to its running sums) would leak into this checkpoint.
  progress = json.loads(json.dumps(progress))
  with _saving(manager):  # A previous save that failed is reported here, by the next.
    manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                               progress=ocp.args.JsonSave(progress)),
                 metrics=eval_metrics, force=True)


def wait(manager: ocp.CheckpointManager) -> None:
  """Waits for the asynchronous save in flight to be written.

  Raises:
    DiskFull: the disk filled up while it was written (its unfinished files are removed).
  """
  with _saving(manager):
    manager.wait_until_finished()


def close(manager: ocp.CheckpointManager) -> None:
  """Finishes the save in flight, as `wait`, and closes `manager`."""
  with _saving(manager):
    manager.close()


_UNFINISHED = '.orbax-checkpoint-tmp'  # The suffix of a step orbax is still writing.


@contextlib.contextmanager
def _saving(manager: ocp.CheckpointManager):
  """Turns a save that failed for want of space into `DiskFull`, after removing its unfinished
  step directory (orbax only renames a step into place once complete, so the earlier ones are
  untouched); any other failure is left as it is."""
  try:
    yield
  except Exception as e:  # pylint: disable=broad-except  # Checked below; re-raised otherwise.
    if 'No space left on device' not in str(e) and getattr(e, 'errno', None) != errno.ENOSPC:
      raise
    directory = str(manager.directory)
    unfinished = sorted(n for n in os.listdir(directory) if n.endswith(_UNFINISHED))
    for name in unfinished:
      shutil.rmtree(os.path.join(directory, name), ignore_errors=True)
    steps = [n[:-len(_UNFINISHED)] for n in unfinished]
    raise DiskFull(directory, steps, shutil.disk_usage(directory).free) from None


def describe_step(manager: ocp.CheckpointManager, step: int) -> str:
  """Which checkpoint `step` is, in words: 'step 440, the one the run chose on validation'."""
  chosen = manager.best_step()
  if step == chosen:
    return f'step {step:,}, the one the run chose on validation'
  if chosen is None and step == manager.latest_step():
    return f'step {step:,}, the latest (the run ranked none on validation)'
  return f'step {step:,}' + (f' (the run chose step {chosen:,} on validation)' if chosen else '')


def resolve_step(manager: ocp.CheckpointManager, which: str | int) -> int:
  """Returns the step of checkpoint `which`: 'latest', 'best' or a step number.

  Raises:
    UserError: there is no such checkpoint; the message lists the ones there are.
  """
  steps = manager.all_steps()
  if not steps:
    raise UserError(f'{manager.directory} holds no checkpoint; train first with cnn_jax.main.')
  if which == 'latest':
    return manager.latest_step()
  if which == 'best':
    return manager.best_step() if manager.best_step() is not None else manager.latest_step()
  try:
    step = int(which)
  except ValueError:
    step = None
  if step not in steps:
    raise UserError(f"checkpoint {which!r} not found; use 'latest', 'best' or one of the saved "
                    f'steps: {", ".join(map(str, steps))}')
  return step


def restore(manager: ocp.CheckpointManager, step: int, template: Any) -> tuple[Any, dict]:
  """Restores (state, progress) of checkpoint `step` onto the structure of `template`.

  `template` is a freshly created TrainState (or its `jax.eval_shape`): the restored arrays take
  its shapes, dtypes and shardings (one local device where it has none), so a checkpoint written
  on several devices restores on one.

  Raises:
    IncompatibleCheckpoint: the checkpoint's state does not have the template's structure or
      shapes.
    DamagedCheckpoint: the checkpoint cannot be read whole (a file missing, truncated or empty).
  """
  try:
    saved = manager.item_metadata(step)['state']
  except Exception as e:  # pylint: disable=broad-except  # orbax and TensorStore raise many kinds.
    raise DamagedCheckpoint(manager.directory, step, _first_line(e)) from None
  if not _shapes_by_path(saved or {}):  # state/_METADATA missing: no tree to compare.
    raise DamagedCheckpoint(manager.directory, step, 'its state has no readable metadata')
  mismatches = _mismatches(saved, template)
  if mismatches:  # Checked first: a failed orbax restore leaves async callbacks that print noise.
    raise IncompatibleCheckpoint('; '.join(mismatches[:4])
                                 + (f' and {len(mismatches) - 4} more' if len(mismatches) > 4 else ''))
  here = _local_sharding()
  abstract = jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype,
                                     sharding=getattr(x, 'sharding', None) or here), template)
  try:
    restored = manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract), progress=ocp.args.JsonRestore()))
  except Exception as e:  # pylint: disable=broad-except  # As above.
    raise DamagedCheckpoint(manager.directory, step, _first_line(e)) from None
  if not isinstance(restored.progress, dict):
    raise DamagedCheckpoint(manager.directory, step, 'its progress record is empty')
  return restored.state, dict(restored.progress)


@functools.cache
def _drop_closed_loop_callbacks() -> None:
  """After a failed restore or save, TensorStore finishes the reads or writes orbax abandoned and
  calls back into orbax's asyncio loop, closed by then: Python reports each call's 'Event loop is
  closed' (a traceback on stderr) about nothing a user can act on. Those alone are dropped."""
  closed = lambda error: isinstance(error, RuntimeError) and str(error) == 'Event loop is closed'
  previous_unraisable, previous_except = sys.unraisablehook, sys.excepthook
  sys.unraisablehook = lambda u: None if closed(u.exc_value) else previous_unraisable(u)
  sys.excepthook = lambda kind, error, tb: (None if closed(error) else
                                            previous_except(kind, error, tb))


def _first_line(error: Exception) -> str:
  """What went wrong, in a line: the error's first line, without TensorStore's long spec."""
  text = (str(error).strip().splitlines() or [type(error).__name__])[0]
  return f'{type(error).__name__}: {text.split(" [tensorstore_spec")[0][:200]}'


def restore_intact(manager: ocp.CheckpointManager, steps: list[int], template: Any,
                   on_damaged) -> tuple[int, Any, dict]:
  """Restores the first of `steps` whose checkpoint is intact; returns (step, state, progress).
  `on_damaged(DamagedCheckpoint)` is told of each one skipped.

  Raises:
    DamagedCheckpoint: every one of `steps` is damaged (the last one's).
    IncompatibleCheckpoint: as `restore`.
  """
  for i, step in enumerate(steps):
    try:
      return (step, *restore(manager, step, template))
    except DamagedCheckpoint as damaged:
      if i == len(steps) - 1:
        raise
      on_damaged(damaged)
  raise ValueError('no steps to restore')


def _local_sharding() -> jax.sharding.Sharding:
  # A restore target needs a sharding: without one, orbax restores onto the devices that saved
  # the checkpoint, which may not exist here (a run saved on 8 GPUs, restored on a laptop).
  return jax.sharding.SingleDeviceSharding(jax.local_devices()[0])


def _shapes_by_path(tree: Any) -> dict[str, tuple]:
  """{'params/conv_0/kernel': shape, ...}; dataclass fields, dict keys and tuple indices alike."""
  def name(key):
    for attribute in ('key', 'name', 'idx'):
      if hasattr(key, attribute):
        return str(getattr(key, attribute))
    return str(key)
  def shape(leaf):
    if jax.dtypes.issubdtype(getattr(leaf, 'dtype', None), jax.dtypes.prng_key):
      leaf = jax.eval_shape(jax.random.key_data, leaf)  # Keys are saved as their raw uint32 data.
    return tuple(leaf.shape)
  leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
  return {'/'.join(name(k) for k in path): shape(leaf) for path, leaf in leaves}


def _mismatches(saved_metadata: Any, template: Any) -> list[str]:
  """Lists how the saved state's arrays differ from the template's (names and shapes)."""
  saved, wanted = _shapes_by_path(saved_metadata), _shapes_by_path(template)
  problems = [f'{path}: saved {saved[path]}, this config {wanted[path]}'
              for path in wanted if path in saved and saved[path] != wanted[path]]
  problems += [f'{path} is not in the checkpoint' for path in wanted if path not in saved]
  problems += [f'{path} is in the checkpoint only' for path in saved if path not in wanted]
  return problems


def locate(path: str) -> tuple[str, int | None]:
  """Returns (checkpoints directory, step or None for latest) for a workdir or checkpoint path.

  Raises:
    UserError: `path` is neither.
  """
  path = os.path.abspath(path)
  if os.path.isdir(os.path.join(path, CHECKPOINT_DIR)):
    return os.path.join(path, CHECKPOINT_DIR), None
  name = os.path.basename(path)
  if name.isdigit() and os.path.isdir(os.path.join(path, 'state')):
    return os.path.dirname(path), int(name)
  raise UserError(f'{path!r} is neither a workdir with checkpoints nor a checkpoint directory '
                  f'(WORKDIR/{CHECKPOINT_DIR}/STEP).')


def _merge(fresh: Any, loaded: Any, what: str) -> tuple[Any, list[str], list[str]]:
  """Copies `loaded` leaves onto `fresh` where path and shape match; returns (tree, taken, kept)."""
  fresh_flat = traverse_util.flatten_dict(fresh, sep='/')
  loaded_flat = traverse_util.flatten_dict(loaded or {}, sep='/')
  merged, taken, kept = {}, [], []
  for path, leaf in fresh_flat.items():
    source = loaded_flat.get(path)
    if source is not None and tuple(source.shape) == tuple(leaf.shape):
      merged[path] = jax.device_put(np.asarray(source, leaf.dtype), leaf.sharding)
      taken.append(path)
    else:
      merged[path] = leaf
      found = 'absent' if source is None else f'{tuple(source.shape)} ≠ {tuple(leaf.shape)}'
      kept.append(f'{what}/{path} ({found})')
  return traverse_util.unflatten_dict(merged, sep='/'), taken, kept


def read_state(path: str) -> tuple[dict, str, int]:
  """Reads a saved train state as it was saved (no template): (state dict, root, step).

  Args:
    path: a workdir (its latest checkpoint) or a checkpoint directory WORKDIR/checkpoints/STEP.

  The arrays land on this process's first device, whatever devices wrote them.

  Raises:
    UserError: no checkpoint at `path`.
  """
  root, step = locate(path)
  manager = ocp.CheckpointManager(root, options=ocp.CheckpointManagerOptions(read_only=True),
                                  item_handlers=_item_handlers())
  step = manager.latest_step() if step is None else step
  if step is None:
    raise UserError(f'{root} holds no checkpoint.')
  here = _local_sharding()
  target = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=here),
                        manager.item_metadata(step)['state'])
  state = manager.restore(step, args=ocp.args.Composite(
      state=ocp.args.StandardRestore(target))).state
  manager.close()
  return state, root, step


def warm_start(state: Any, path: str, layers: str = 'all') -> Any:
  """Returns `state` with params and batch statistics loaded from the checkpoint at `path`.

  Args:
    state: a freshly initialised TrainState; its optimizer state and step are kept.
    path: a workdir (its latest checkpoint) or a checkpoint directory WORKDIR/checkpoints/STEP.
    layers: 'all' (every layer must match in name and shape) or 'matching' (load those that do,
      keep the fresh initialisation for the rest, e.g. a classifier for another number of classes).

  Raises:
    UserError: no checkpoint at `path`, or layers='all' and some layer does not match.
  """
  loaded, root, step = read_state(path)
  params, taken, kept = _merge(state.params, loaded['params'], 'params')
  stats, _, kept_stats = _merge(state.batch_stats, loaded.get('batch_stats'), 'batch_stats')
  kept += kept_stats
  if kept and layers == 'all':
    raise UserError(f'config.init_from={path!r} (step {step:,}) does not match this model: '
                    + '; '.join(kept) + '. Set --config.init_layers=matching to load only the '
                    'layers that match.')
  if jax.process_index() == 0:
    print(f'Warm start from {root} step {step:,}: loaded {len(taken)} parameter arrays'
          + (f'; freshly initialised: {", ".join(kept)}' if kept else '') + '.', flush=True)
  return state.replace(params=params, batch_stats=stats)


class IncompatibleCheckpoint(UserError):
  """The checkpoint holds a state of another shape: another model, optimizer or dataset."""


class DiskFull(UserError):
  """A checkpoint could not be written: no space left on the workdir's device."""

  def __init__(self, directory: str, steps: list[str], free: int):
    which = f'the checkpoint at step {", ".join(steps)}' if steps else 'a checkpoint'
    super().__init__(
        f'No space left on the device to save {which} in {directory} ({free / 2**20:,.1f} MiB '
        'free). The unfinished checkpoint was removed; the ones saved before it are intact. Free '
        'some space (or keep fewer: config.checkpoint.keep_last, keep_best) and re-run the same '
        'command to resume.')


class DamagedCheckpoint(UserError):
  """A checkpoint that cannot be read whole: a file missing, truncated or emptied."""

  def __init__(self, directory, step: int, reason: str):
    super().__init__(f'the checkpoint at step {step:,} in {directory} is damaged ({reason})')
    self.directory, self.step, self.reason = str(directory), step, reason
