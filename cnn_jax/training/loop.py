"""The training loop: one body for a single model and for a population of N models.

A population differs from a single model only in its step functions (the single model's, vmapped
over members) and in having N of what the loop writes: metrics files, checkpoints, evaluations.
Everything else (logging the learning rate, evaluation, timed and signalled checkpoints, the
progress bar) is written once, here, for both; the step runners are in `runners`, resuming in
`resume`.
"""

import dataclasses
import signal
import time
from typing import Any, Callable, Iterable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from tqdm import tqdm

from cnn_jax.runtime import distributed, signals
from cnn_jax.runtime.writers import MetricWriter
from cnn_jax.training import checkpoint, steps
from cnn_jax.training.setup import Plan

_SUMS = ('loss', 'accuracy', 'count')  # The running train metrics, summed between logs.


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
  with signals.StopRequest() as stop:
    while done < plan.num_steps:
      count = min(plan.steps_per_dispatch, plan.next_stop(done) - done)
      state, metrics = runner(state, done, count)
      pending.extend(metrics)  # Train metrics stay on the device until logged or saved.
      done += count
      bar.update(count)
      due = plan.due(done)
      if due['log']:
        _accumulate(sums, pending)
        train = _log_train(writers, sums, np.asarray(learning_rates(done - 1)), done)
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
        _save(managers, writers, trainee.split(state), sums, finals if due['eval'] else None)
        last_save = time.time()
      if stopping:
        break
  bar.close()
  for manager in managers:
    manager.wait_until_finished()  # The last save is asynchronous: complete it first.
  if stopping:
    for writer in writers:
      writer.close()
    # A process that was not signalled itself stops as its signalled peers do.
    raise signals.TrainingInterrupted(stop.signum or signal.SIGTERM, done)
  finals = finals if finals[0] else evaluate_all(state)  # A finished run re-run: its result.
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
