"""Stop requests: SIGTERM (preemption, `kill`) and Ctrl-C end training at the next step boundary.

The loop checks `requested` after every step, saves a checkpoint and exits cleanly, so a killed run
loses nothing; re-running the same command resumes it.
"""

import os
import signal
import threading
import time


class StopRequest:
  """A context manager that turns SIGTERM and SIGINT into a flag instead of an exception."""

  SIGNALS = (signal.SIGTERM, signal.SIGINT)

  def __init__(self):
    self.signum = None
    self._previous = {}

  @property
  def requested(self) -> bool:
    """True once a stop signal arrived."""
    return self.signum is not None

  def _handle(self, signum, frame):
    del frame
    if self.signum is not None and signum == signal.SIGINT:
      raise KeyboardInterrupt  # A second Ctrl-C means "now", without the final checkpoint.
    self.signum = signum

  def __enter__(self) -> 'StopRequest':
    for sig in self.SIGNALS:
      try:
        self._previous[sig] = signal.signal(sig, self._handle)
      except ValueError:  # Not the main thread (e.g. a notebook worker): signals stay as they were.
        pass
    return self

  def __exit__(self, *exc) -> None:
    for sig, handler in self._previous.items():
      signal.signal(sig, handler)


class TrainingInterrupted(Exception):
  """Training stopped on a signal after saving a checkpoint at `step` (of sweep trial `trial`,
  where a sweep ran it)."""

  def __init__(self, signum: int, step: int):
    super().__init__(f'{signal.Signals(signum).name} at step {step:,}: checkpoint saved. '
                     'Re-run the same command to continue.')
    self.signum = signum
    self.step = step
    self.trial: int | None = None


class SweepInterrupted(Exception):
  """A sweep stopped on a signal once its `workers` worker processes had saved their trials."""

  def __init__(self, signum: int, workers: int):
    super().__init__(f'Sweep stopped by {signal.Signals(signum).name}: its {workers} workers '
                     'saved their trials\' checkpoints. Re-run the same command to continue.')
    self.signum = signum


def stop_with_parent(parent_pid: int, poll_seconds: float = 1.0) -> None:
  """Sends this process SIGTERM once `parent_pid` is no longer its parent (the parent died, even
  by SIGKILL, and the process was re-parented): a worker then saves its trial's checkpoint and
  ends instead of running on as an orphan that a re-run of the parent would race.

  Polls from a daemon thread, so it works wherever Python does (Linux's PR_SET_PDEATHSIG would
  not on macOS).
  """

  def watch():
    while os.getppid() == parent_pid:
      time.sleep(poll_seconds)
    os.kill(os.getpid(), signal.SIGTERM)

  threading.Thread(target=watch, name='stop_with_parent', daemon=True).start()
