"""Metrics to `workdir/metrics.jsonl` (one JSON object per line) and TensorBoard event files.

tensorboardX writes the event files, so TensorBoard curves need no TensorFlow at train time.
"""

import json
import os
import time
from typing import Mapping


class MetricWriter:
  """Appends {'step', 'split', 'time', **scalars} records; the files survive a crash line by line."""

  def __init__(self, workdir: str, tensorboard: bool = True, resume_step: int = 0,
               elapsed: float = 0.0, enabled: bool = True):
    """Opens the outputs, first dropping records after `resume_step` (all of them when it is 0).

    A run killed after its last checkpoint wrote metrics for steps it will now redo; dropping them
    (and purging them from TensorBoard) leaves exactly one record per step. `elapsed` is the
    training time already spent, so 'time' continues across resumes. A writer that is not
    `enabled` (every process but the first of a multi-host run) writes nothing.
    """
    self._start = time.time() - elapsed
    self._enabled = enabled
    if not enabled:
      return
    _truncate_after(workdir, resume_step)
    self._jsonl = open(os.path.join(workdir, 'metrics.jsonl'), 'a', encoding='utf-8')
    self._tb = None
    if tensorboard:
      from tensorboardX import SummaryWriter  # pylint: disable=g-import-not-at-top
      self._tb = SummaryWriter(os.path.join(workdir, 'tensorboard'),
                               purge_step=resume_step + 1)

  def write(self, step: int, split: str, scalars: Mapping[str, float]) -> None:
    """Records `scalars` of `split` ('train' or 'eval') at training step `step`."""
    if not self._enabled:
      return
    record = {'step': int(step), 'split': split, 'time': round(time.time() - self._start, 3)}
    record.update({k: float(v) for k, v in scalars.items()})
    self._jsonl.write(json.dumps(record) + '\n')
    self._jsonl.flush()
    if self._tb is not None:
      for key, value in scalars.items():
        self._tb.add_scalar(f'{split}/{key}', float(value), int(step))

  def elapsed(self) -> float:
    """Seconds of training recorded so far, resumed runs included."""
    return time.time() - self._start

  def close(self) -> None:
    """Flushes and closes both outputs."""
    if not self._enabled:
      return
    self._jsonl.close()
    if self._tb is not None:
      self._tb.close()


def _truncate_after(workdir: str, step: int) -> None:
  if not os.path.exists(os.path.join(workdir, 'metrics.jsonl')):
    return
  kept = [record for record in read_metrics(workdir) if record['step'] <= step]
  path = os.path.join(workdir, 'metrics.jsonl')
  with open(path + '.tmp', 'w', encoding='utf-8') as f:
    f.writelines(json.dumps(record) + '\n' for record in kept)
  os.replace(path + '.tmp', path)  # Atomic: a kill here leaves the old or the new file.


def read_metrics(workdir: str) -> list[dict]:
  """Returns the records of `workdir/metrics.jsonl` in order ([] if there is none)."""
  path = os.path.join(workdir, 'metrics.jsonl')
  if not os.path.exists(path):
    return []
  records = []
  with open(path, encoding='utf-8') as f:
    for line in f:
      try:
        records.append(json.loads(line))
      except json.JSONDecodeError:
        break  # A line cut short by a kill mid-write; nothing after it can be trusted.
  return records
