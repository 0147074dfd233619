"""Compiled programs kept on disk between runs, and the time a run spends compiling.

JAX's persistent compilation cache stores each program XLA compiles, keyed by the program, the
compiler options, the devices and the JAX version. With it, the second run of a config, each sweep
trial after the first, a resumed run, and evaluate or predict on a workdir load their programs
instead of compiling them again. `config.compilation_cache` says where: 'auto' (the default) is
$XDG_CACHE_HOME/cnn_jax/jax, else ~/.cache/cnn_jax/jax; '' turns the cache off. A
JAX_COMPILATION_CACHE_DIR set in the environment is the user's own choice and wins.

The cache is bounded (least recently used programs go first), and with a bound JAX reads and
writes it under a file lock, so several processes (sweep workers, the test suite) can share it.
"""

import os
import threading

import jax
from jax import monitoring

from cnn_jax.errors import UserError

AUTO = 'auto'
MAX_BYTES = 2 * 1024 ** 3  # Enough for thousands of programs of the models here.
# Every program is kept, the smallest too: on the digits run, 17 of its 19 programs compile in
# under 0.2 s each, but together in 0.6 s, while reading all 19 back takes 0.1 s.
MIN_COMPILE_SECONDS = 0.0
BACKEND_COMPILE_EVENT = '/jax/core/compile/backend_compile_duration'
_CACHE_HIT = '/jax/compilation_cache/cache_hits'


def directory(setting: str) -> str | None:
  """The cache directory `setting` names ('auto', '' or a path); None when it is off."""
  if not setting:
    return None
  if setting == AUTO:
    base = os.environ.get('XDG_CACHE_HOME') or os.path.join(os.path.expanduser('~'), '.cache')
    return os.path.join(base, 'cnn_jax', 'jax')
  return os.path.abspath(os.path.expanduser(setting))


def enable(setting: str) -> str | None:
  """Points JAX's persistent compilation cache at `setting`'s directory (see the module doc);
  returns the directory in use, or None. Call before the first compilation of the process.

  A directory that cannot be created or written is reported in one line, and the run compiles
  as it would without a cache.

  Raises:
    UserError: `setting` names a file.
  """
  if os.environ.get('JAX_COMPILATION_CACHE_DIR'):
    return os.environ['JAX_COMPILATION_CACHE_DIR']
  path = directory(setting)
  if path is None:
    jax.config.update('jax_enable_compilation_cache', False)
    return None
  if os.path.exists(path) and not os.path.isdir(path):
    raise UserError(f'config.compilation_cache={setting!r}: {path} is a file, not a directory; '
                    "give a directory, 'auto', or '' to compile without a cache.")
  try:
    os.makedirs(path, exist_ok=True)
  except OSError as e:
    print(f'Compiling without a cache: cannot create {path} ({e.strerror}).', flush=True)
    return None
  if not os.access(path, os.W_OK | os.X_OK):
    print(f'Compiling without a cache: {path} is not writable.', flush=True)
    return None
  jax.config.update('jax_enable_compilation_cache', True)
  jax.config.update('jax_compilation_cache_dir', path)
  jax.config.update('jax_compilation_cache_max_size', MAX_BYTES)
  jax.config.update('jax_persistent_cache_min_compile_time_secs', MIN_COMPILE_SECONDS)
  return path


class CompileClock:
  """Counts, from now on, the programs this process compiled (or loaded from the cache) and the
  seconds that took, from JAX's own monitoring events."""

  _lock = threading.Lock()
  _listening = False
  _seconds = 0.0
  _programs = 0
  _hits = 0

  def __init__(self):
    CompileClock._listen()
    self._start = (CompileClock._seconds, CompileClock._programs, CompileClock._hits)

  @classmethod
  def _listen(cls) -> None:
    with cls._lock:
      if cls._listening:
        return
      cls._listening = True
    monitoring.register_event_duration_secs_listener(cls._on_duration)
    monitoring.register_event_listener(cls._on_event)

  @classmethod
  def _on_duration(cls, event: str, seconds: float, **kwargs) -> None:
    del kwargs
    if event == BACKEND_COMPILE_EVENT:
      with cls._lock:
        cls._seconds += seconds
        cls._programs += 1

  @classmethod
  def _on_event(cls, event: str, **kwargs) -> None:
    del kwargs
    if event == _CACHE_HIT:
      with cls._lock:
        cls._hits += 1

  def summary(self) -> str:
    """'compiling 1.9 s, 3 of 8 programs from the disk cache' since this clock started."""
    seconds, programs, hits = (now - then for now, then in zip(
        (CompileClock._seconds, CompileClock._programs, CompileClock._hits), self._start))
    return (f'compiling {seconds:.1f} s, {hits} of {programs} program'
            f'{"" if programs == 1 else "s"} from the disk cache')
