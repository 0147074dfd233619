"""Metrics to `workdir/metrics.jsonl` (one JSON object per line) and TensorBoard event files.

tensorboardX writes the event files, so TensorBoard curves need no TensorFlow at train time.
"""

import json
import os
import time
from typing import Mapping


class MetricWriter:
  """Appends {'step', 'split', 'time', **scalars} records; the files survive a crash line by line."""

  def __init__(self, workdir: str, tensorboard: bool = True):
    self._jsonl = open(os.path.join(workdir, 'metrics.jsonl'), 'a', encoding='utf-8')
    self._start = time.time()
    self._tb = None
    if tensorboard:
      from tensorboardX import SummaryWriter  # pylint: disable=g-import-not-at-top
      self._tb = SummaryWriter(os.path.join(workdir, 'tensorboard'))

  def write(self, step: int, split: str, scalars: Mapping[str, float]) -> None:
    """Records `scalars` of `split` ('train' or 'eval') at training step `step`."""
    record = {'step': int(step), 'split': split, 'time': round(time.time() - self._start, 3)}
    record.update({k: float(v) for k, v in scalars.items()})
    self._jsonl.write(json.dumps(record) + '\n')
    self._jsonl.flush()
    if self._tb is not None:
      for key, value in scalars.items():
        self._tb.add_scalar(f'{split}/{key}', float(value), int(step))

  def close(self) -> None:
    """Flushes and closes both outputs."""
    self._jsonl.close()
    if self._tb is not None:
      self._tb.close()


def read_metrics(workdir: str) -> list[dict]:
  """Returns the records of `workdir/metrics.jsonl` in order ([] if there is none)."""
  path = os.path.join(workdir, 'metrics.jsonl')
  if not os.path.exists(path):
    return []
  with open(path, encoding='utf-8') as f:
    return [json.loads(line) for line in f if line.strip()]
