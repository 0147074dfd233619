"""One run per workdir: a lock held for the run's lifetime.

A second `train` (or `sweep`) on a workdir in use refuses at once, naming the process that holds
it, instead of deleting checkpoints the first one is saving or reading. The lock is the kernel's
(`flock` on WORKDIR/.cnn_jax.lock): it is released when the holder ends, however it ends (kill -9
included), so a lock file left behind never blocks the next run; the file only says who held it
last.
"""

import contextlib
import fcntl
import os
import socket
import sys
import time
from collections.abc import Iterator

from cnn_jax.errors import UserError

LOCK_FILE = '.cnn_jax.lock'


@contextlib.contextmanager
def held(workdir: str, enabled: bool = True) -> Iterator[None]:
  """Holds `workdir`'s lock for the block (creating the directory; a directory it created and the
  block left empty, as a run refused before any work leaves it, is removed again); `enabled`
  False holds nothing (the other processes of a multi-process run: process 0 holds it for them
  all).

  Raises:
    UserError: another process holds it (the message names it), or the directory cannot be
      made or written.
  """
  if not enabled:
    yield
    return
  created = not os.path.exists(workdir)
  try:
    os.makedirs(workdir, exist_ok=True)
    fd = os.open(os.path.join(workdir, LOCK_FILE), os.O_RDWR | os.O_CREAT, 0o644)
  except OSError as e:
    raise UserError(f'--workdir {workdir!r} cannot be used: {e.strerror} ({e.filename}); give a '
                    'directory you can write to.') from None
  try:
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      holder = os.read(fd, 1024).decode(errors='replace').strip() or 'another process'
      raise UserError(f'{workdir} is in use by {holder}. Two runs on one workdir would delete '
                      'each other\'s checkpoints: wait for it to end (or stop it), or give '
                      'another --workdir.') from None
    command = ' '.join(os.path.basename(a) if i == 0 else a for i, a in enumerate(sys.argv))
    os.ftruncate(fd, 0)
    os.write(fd, f'process {os.getpid()} on {socket.gethostname()} ({command}), since '
                 f'{time.strftime("%Y-%m-%d %H:%M:%S")}\n'.encode())
    yield
  finally:
    os.close(fd)  # Releases the lock.
    if created and os.listdir(workdir) == [LOCK_FILE]:
      os.remove(os.path.join(workdir, LOCK_FILE))
      os.rmdir(workdir)
