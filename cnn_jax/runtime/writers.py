"""Metrics to `workdir/metrics.jsonl` (one JSON object per line) and TensorBoard event files.

tensorboardX writes the event files, so TensorBoard curves need no TensorFlow at train time. As
Keras does, each split is a run of its own (`tensorboard/train`, `tensorboard/validation`, and
`tensorboard/test`) with the same tags ('loss', 'accuracy'), so TensorBoard draws train and
validation on the same chart.
"""

import json
import os
import sys
import time
from typing import Mapping

# The TensorBoard run of each split the loop writes: 'eval' is the split choices are made on.
TENSORBOARD_RUNS = {'train': 'train', 'eval': 'validation', 'test': 'test'}


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
    self._tb = {}
    if tensorboard:
      SummaryWriter = _summary_writer_class()  # pylint: disable=invalid-name
      self._tb = {split: SummaryWriter(os.path.join(workdir, 'tensorboard', run),
                                       purge_step=resume_step + 1)
                  for split, run in TENSORBOARD_RUNS.items()}

  def write(self, step: int, split: str, scalars: Mapping[str, float]) -> None:
    """Records `scalars` of `split` ('train' or 'eval') at training step `step`."""
    if not self._enabled:
      return
    record = {'step': int(step), 'split': split, 'time': round(time.time() - self._start, 3)}
    record.update({k: float(v) for k, v in scalars.items()})
    self._jsonl.write(json.dumps(record) + '\n')
    self._jsonl.flush()
    if split in self._tb:
      for key, value in scalars.items():
        if key != 'count':  # How many examples: not a curve.
          self._tb[split].add_scalar(key, float(value), int(step))

  def elapsed(self) -> float:
    """Seconds of training recorded so far, resumed runs included."""
    return time.time() - self._start

  def close(self) -> None:
    """Flushes and closes both outputs."""
    if not self._enabled:
      return
    self._jsonl.close()
    for writer in self._tb.values():
      writer.close()


def write_hparams(workdir: str, values: Mapping[str, object], metrics: Mapping[str, float]) -> None:
  """Records a sweep trial's swept values and results for TensorBoard's HParams view
  (`tensorboard/hparams` of its workdir): one row per trial over a sweep's trials."""
  SummaryWriter = _summary_writer_class()  # pylint: disable=invalid-name
  from tensorboardX.summary import hparams  # pylint: disable=g-import-not-at-top
  shown = {key: value if isinstance(value, (bool, int, float, str)) else str(value)
           for key, value in values.items()}
  results = {f'hparam/{key}': float(value) for key, value in metrics.items()}
  with SummaryWriter(os.path.join(workdir, 'tensorboard', 'hparams')) as writer:
    for summary in hparams(shown, results):  # The experiment, and this trial's session.
      writer.file_writer.add_summary(summary)
    for key, value in results.items():
      writer.add_scalar(key, value)


def _summary_writer_class() -> type:
  """tensorboardX's SummaryWriter, imported without PyTorch.

  tensorboardX imports PyTorch whenever it is installed, only to accept torch tensors as values.
  These writers pass floats, and that import took 1.2 s of the 7.4 s default digits job on a
  2-core CPU. A process that has already imported PyTorch keeps using it.
  """
  if 'torch' in sys.modules or 'tensorboardX' in sys.modules:
    from tensorboardX import SummaryWriter  # pylint: disable=g-import-not-at-top
    return SummaryWriter
  sys.modules['torch'] = None  # `import torch` raises ImportError while tensorboardX loads.
  try:
    from tensorboardX import SummaryWriter  # pylint: disable=g-import-not-at-top
  finally:
    del sys.modules['torch']
  return SummaryWriter


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
