"""The training loop: one body for a single model and for a population of N models.

A population differs from a single model only in its step functions (the single model's, vmapped
over members) and in having N of what the loop writes: metrics files, checkpoints, evaluations.
Everything else (logging the learning rate, evaluation, timed and signalled checkpoints, the
progress bar) is written once, here, for both; the step runners are in `runners`, resuming in
`resume`.
"""

import contextlib
import dataclasses
import signal
import time
from typing import Any, Callable, Iterable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from tqdm import tqdm

from cnn_jax.errors import UserError
from cnn_jax.runtime import distributed, signals
from cnn_jax.runtime.writers import MetricWriter
from cnn_jax.training import checkpoint, steps
from cnn_jax.training.setup import Plan

_SUMS = ('loss', 'accuracy', 'count')  # The running train metrics, summed between logs.


class TrainingDiverged(UserError):
  """The training loss stopped being finite; the checkpoints saved before it are kept."""


@dataclasses.dataclass(frozen=True)
class Trainee:
  """What the loop trains: one model, or N stacked models (a population).

  Attributes:
    init: returns the fresh train state; with a leading member axis [N] when `stacked`.
    steps: its train and eval steps; when `stacked`, they take the stacked states and give
      metrics and sums [N].
    configs: each member's own complete config (for a single model, the run's config).
    workdirs: where each member's metrics, checkpoints and records go.
    schedules: each member's learning rate as a function of the step, for the logs.
    stacked: whether the state carries a member axis.
  """
  init: Callable[[], steps.TrainState]
  steps: steps.Steps
  configs: tuple[ml_collections.ConfigDict, ...]
  workdirs: tuple[str, ...]
  schedules: tuple[Callable, ...]
  stacked: bool = False

  def split(self, state) -> list:
    """The members' own states."""
    if not self.stacked:
      return [state]
    return [jax.tree.map(lambda x, i=i: x[i], state) for i in range(len(self.workdirs))]

  def join(self, states: list):
    """The state the step functions take, from the members' own states."""
    return jax.tree.map(lambda *xs: jnp.stack(xs), *states) if self.stacked else states[0]


def step_of(trainee: Trainee, state) -> int:
  """The number of steps `state` has trained (every member has trained as many)."""
  done = jax.device_get(state.step)  # [] for one model, [N] for a population.
  return int(done[0] if trainee.stacked else done)


def evaluate(eval_step, state, batches: Iterable[dict]) -> list[dict[str, float]]:
  """Returns each member's {'loss', 'accuracy', 'count'} over all `batches` (every real example
  once); a single model is a list of one."""
  totals = None
  for batch in batches:
    sums = eval_step(state, batch)
    totals = sums if totals is None else jax.tree.map(jnp.add, totals, sums)
  totals = {k: np.atleast_1d(v) for k, v in jax.device_get(totals).items()}
  return [{'loss': float(loss) / float(count), 'accuracy': float(correct) / float(count),
           'count': float(count)}
          for loss, correct, count in zip(totals['loss_sum'], totals['correct'], totals['count'])]


# ---- the loop ----------------------------------------------------------------------------------

def _accumulate(sums: np.ndarray, pending: list) -> None:
  """Adds the pending per-step train metrics into the running sums [N, 3], in step order, in
  float64. The same additions in the same order happen whether or not the run was resumed in
  between (the sums travel in the checkpoints), so logged averages are bitwise identical."""
  # (metrics, steps) pairs: [] or [N] (members) for one step, [K] or [K, N] for a scan of K
  # whose first `steps` ran.
  for metrics, count in jax.device_get(pending):
    loss, accuracy = (np.reshape(metrics[k], (-1, len(sums)))[:count]
                      for k in ('loss', 'accuracy'))
    for step_loss, step_accuracy in zip(loss, accuracy):
      sums[:, 0] += step_loss
      sums[:, 1] += step_accuracy
      sums[:, 2] += 1
  pending.clear()


def _metrics_line(done: int, plan: Plan, split: str, finals: list[dict], seconds: float) -> str:
  """One line of a split's metrics at step `done`: one model's loss and accuracy, or how the
  members' accuracies spread."""
  if len(finals) == 1:
    return (f'step {done:>6,}/{plan.num_steps:,}  epoch {done / plan.steps_per_epoch:6.2f}  '
            f'{split} loss {finals[0]["loss"]:.4f}  accuracy {finals[0]["accuracy"]:.2%}  '
            f'({seconds:.1f} s)')
  accuracies = [f['accuracy'] for f in finals]
  return (f'step {done:>6,}/{plan.num_steps:,}  {split} accuracy: best {max(accuracies):.2%} '
          f'(member {int(np.argmax(accuracies))}), median {np.median(accuracies):.2%}, worst '
          f'{min(accuracies):.2%}  ({seconds:.1f} s)')


class _Divergence:
  """Watches the training loss: a member whose loss is no longer finite has diverged. One model
  (or a whole population) that diverges ends the run; a member of a population is marked and the
  others train on (its best checkpoint, ranked on the eval split, predates it)."""

  def __init__(self, workdirs: tuple[str, ...], managers: list, stop: bool):
    self.workdirs, self.managers, self.stop = workdirs, managers, stop
    self.at_step = [None] * len(workdirs)  # The step by which each member had diverged.
    self.last_finite = [None] * len(workdirs)  # (step, loss) of each member's last finite log.

  def logged(self, done: int, train: list[dict]) -> None:
    for i, metrics in enumerate(train):
      if np.isfinite(metrics['loss']):
        self.last_finite[i] = (done, metrics['loss'])

  def check(self, done: int, sums: np.ndarray) -> None:
    """Looks at the train losses summed since the last log, at step `done`.

    Raises:
      TrainingDiverged: every member not yet diverged has (one model: it has).
    """
    if not self.stop:
      return
    new = [i for i, loss in enumerate(sums[:, 0]) if not np.isfinite(loss) and
           self.at_step[i] is None]
    for i in new:
      self.at_step[i] = done
    if not new:
      return
    if all(step is not None for step in self.at_step):
      raise TrainingDiverged(self._message(new[0], done))
    for i in new:
      distributed.log(f'Member {i} ({self.workdirs[i]}) diverged by step {done:,}: its training '
                      f'loss is no longer finite{self._last(i)}. The other members train on.')

  def _last(self, i: int) -> str:
    if self.last_finite[i] is None:
      return ''
    step, loss = self.last_finite[i]
    return f' (last finite: {loss:.4g} at step {step:,})'

  def _message(self, i: int, done: int) -> str:
    checkpoint.wait(self.managers[i])
    saved = self.managers[i].latest_step()
    kept = (f'Its checkpoints up to step {saved:,} are kept in {self.workdirs[i]}.' if saved
            is not None else 'No checkpoint was saved before it.')
    return (f'Training diverged by step {done:,}: the training loss is no longer finite'
            f'{self._last(i)}. {kept} Try a lower config.optimizer.learning_rate, gradient '
            'clipping (config.optimizer.grad_clip_norm) or a warmup; config.stop_on_nan=False '
            'trains on regardless.')


def _log_train(writers: list, sums: np.ndarray, rates: np.ndarray, done: int) -> list[dict]:
  """Writes each member's train metrics averaged since the last log; returns them."""
  averages = [{'loss': m[0] / m[2], 'accuracy': m[1] / m[2]} for m in sums]
  for writer, member, rate in zip(writers, averages, rates):
    writer.write(done, 'train', {**member, 'learning_rate': float(rate)})
  return averages


def _save(managers: list, writers: list, members: list, sums: np.ndarray,
          metrics: list[dict] | None) -> None:
  """Checkpoints every member with its running sums and time (its eval `metrics`, if just
  evaluated, rank it among the best)."""
  for manager, writer, member, member_sums, member_metrics in zip(
      managers, writers, members, sums, metrics or [None] * len(members)):
    checkpoint.save(manager, member, {'train_sums': dict(zip(_SUMS, member_sums.tolist())),
                                      'elapsed': writer.elapsed()}, member_metrics)


@contextlib.contextmanager
def _closed_on_error(writers: list, bar: tqdm):
  """Closes the metric writers and the bar if training ends by an exception, so what was logged
  before it reaches the files."""
  try:
    yield
  except BaseException:
    bar.close()
    for writer in writers:
      writer.close()
    raise


def _progress_bar(start_step: int, plan: Plan, wanted: bool) -> tuple[tqdm, bool]:
  """The bar, and whether train logs go out as plain lines instead: without a terminal (a file,
  a pipe, CI, SLURM) tqdm hides the bar, and the loss must still reach the log."""
  main = distributed.is_main_process()
  bar = tqdm(initial=start_step, total=plan.num_steps, unit='step', dynamic_ncols=True,
             disable=None if wanted and main else True)
  return bar, wanted and main and bar.disable


def fit(trainee: Trainee, state, runner, evaluate_all: Callable[[Any], list[dict]], plan: Plan,
        managers: list, progress: list[dict], eval_split: str, started: float,
        progress_bar: bool = True, on_eval: Callable | None = None,
        evaluate_test: Callable[[Any], list[dict]] | None = None
        ) -> tuple[list[dict], list[dict] | None]:
  """Trains `state` from its step to plan.num_steps; returns (each member's last eval metrics,
  each one's test metrics or None).

  Logs, evaluates and checkpoints when `plan` says so, and checkpoints on a timer and on SIGTERM
  or Ctrl-C. `on_eval(step, metrics)` runs after each evaluation (a sweep prunes by raising).
  At the end, `evaluate_test` (if given) scores each member's checkpoint chosen on the eval split,
  once; the metrics files record it as split 'test'.

  Raises:
    signals.TrainingInterrupted: a stop signal arrived; every member was checkpointed first.
    TrainingDiverged: the training loss stopped being finite (plan.stop_on_nan), of the model or
      of every member; nothing was saved after it.
  """
  done = start_step = step_of(trainee, state)
  main = distributed.is_main_process()
  writers = [MetricWriter(w, resume_step=start_step, elapsed=p.get('elapsed', 0.0), enabled=main)
             for w, p in zip(trainee.workdirs, progress)]
  sums = np.asarray([[p.get('train_sums', {}).get(k, 0.0) for k in _SUMS] for p in progress],
                    np.float64)  # [N, 3]
  pending, finals, last_save = [], [{}] * len(writers), time.time()
  # Processes of a multi-host run each see their own signals and clocks, while a save and every
  # step are collective: they agree at each log whether to stop or save (one tiny all-gather).
  agree = jax.process_count() > 1
  stopping = False
  # Every member's learning rate in one compiled call: evaluated op by op, a schedule compiles a
  # dozen tiny programs on its first log (0.5 s of a cold digits run on a 2-core CPU).
  learning_rates = jax.jit(lambda step: jnp.stack([jnp.asarray(schedule(step), jnp.float32)
                                                   for schedule in trainee.schedules]))
  bar, plain = _progress_bar(start_step, plan, progress_bar)
  divergence = _Divergence(trainee.workdirs, managers, plan.stop_on_nan)
  with signals.StopRequest() as stop, _closed_on_error(writers, bar):
    while done < plan.num_steps:
      count = min(plan.steps_per_dispatch, plan.next_stop(done) - done)
      state, metrics = runner(state, done, count)
      pending.extend(metrics)  # Train metrics stay on the device until logged or saved.
      done += count
      bar.update(count)
      due = plan.due(done)
      if due['log']:
        _accumulate(sums, pending)
        divergence.check(done, sums)
        train = _log_train(writers, sums, np.asarray(learning_rates(done - 1)), done)
        divergence.logged(done, train)
        bar.set_postfix(loss=f'{train[0]["loss"]:.4f}', acc=f'{train[0]["accuracy"]:.3f}')
        if plain:
          print(_metrics_line(done, plan, 'train', train, time.time() - started), flush=True)
        sums[:] = 0
      if due['eval']:
        finals = evaluate_all(state)
        for writer, member_metrics in zip(writers, finals):
          writer.write(done, 'eval', member_metrics)
        if on_eval is not None:
          on_eval(done, finals)
        if main:
          bar.write(_metrics_line(done, plan, eval_split, finals, time.time() - started))
      timed = bool(plan.save_every_minutes
                   and time.time() - last_save > 60 * plan.save_every_minutes)
      stopping = stop.requested
      if agree:
        stopping, timed = distributed.any_process([stopping, timed]) if due['log'] else (False,
                                                                                         False)
      if due['save'] or stopping or timed:
        _accumulate(sums, pending)  # The running sums travel in the checkpoints.
        divergence.check(done, sums)  # Before the save: keep the last good one.
        _save(managers, writers, trainee.split(state), sums, finals if due['eval'] else None)
        last_save = time.time()
      if stopping:
        break
  bar.close()
  for manager in managers:
    checkpoint.wait(manager)  # The last save is asynchronous: complete it first.
  if stopping:
    for writer in writers:
      writer.close()
    # A process that was not signalled itself stops as its signalled peers do.
    raise signals.TrainingInterrupted(stop.signum or signal.SIGTERM, done)
  finals = finals if finals[0] else evaluate_all(state)  # A finished run re-run: its result.
  finals = [{**f, 'diverged_at_step': step} if step is not None else f
            for f, step in zip(finals, divergence.at_step)]
  tests = None
  if evaluate_test is not None:
    chosen, chosen_steps = chosen_checkpoints(trainee, managers, state)
    tests = [{**metrics, 'checkpoint_step': step}
             for metrics, step in zip(evaluate_test(chosen), chosen_steps)]
    for writer, metrics in zip(writers, tests):
      writer.write(done, 'test', metrics)
  for writer in writers:
    writer.close()
  return finals, tests


def chosen_checkpoints(trainee: Trainee, managers: list, state) -> tuple[Any, list[int]]:
  """Each member's checkpoint chosen on the eval split (its best by checkpoint.best_metric; its
  latest where none was ranked), restored onto `state`'s structure, and their steps."""
  states, chosen_steps = [], []
  last = step_of(trainee, state)
  for manager, member in zip(managers, trainee.split(state)):
    step = manager.best_step()
    if step is None or step == last:  # The state in hand is the chosen one.
      step = last
    else:
      member, _ = checkpoint.restore(manager, step, member)
    states.append(member)
    chosen_steps.append(step)
  return trainee.join(states), chosen_steps
