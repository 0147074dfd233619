"""Freed host memory kept in the process for the next step, instead of going back to the OS.

Why: on CPU every train step allocates and frees XLA's large temporaries (the patches of a 3×3
convolution over 128 maps of 28×28×32 would take 115 MB). glibc's malloc serves blocks that
large with mmap and unmaps them when freed, so the next step faults every page back in, zeroed by
the kernel: on the 2-core CPU the Fashion-MNIST ConvNet spent 45% of its wall time in the kernel
(170 s of a 380 s run). Raising malloc's mmap and trim thresholds keeps freed blocks in its heap
for reuse: the same config then trained 1.26–1.74× faster (median 1.33), with 0.8 s of sys time
in a benchmark where it had 6.3.
The price is that the process keeps its peak memory until it ends.

What this cannot reach by itself: with JAX's asynchronous dispatch, a step runs on one of XLA's
worker threads, whose glibc arena holds blocks of at most 64 MiB, so a step needing more working
memory (the Fashion-MNIST ConvNet at batch 256: 100 MiB) has it mapped and faulted in afresh
every time, whatever the thresholds. `config.speed.cpu_async_dispatch=False` runs steps on the
calling thread, from the main heap, where the block is kept (`set_cpu_async_dispatch`).

`config.speed.keep_freed_memory` ('auto': on CPU, where device buffers are host memory) asks for
it; it changes process-wide allocator settings, once, and only where the C library is glibc.
"""

import ctypes
import ctypes.util
import functools

import jax
from jax._src import xla_bridge  # backends_are_initialized: no public equivalent.

# mallopt's parameters (malloc.h) and the values set: blocks up to 1 GiB come from the heap, up
# to 2 GiB of free heap (the largest value an int holds) stays in the process, and the heap grows
# by 1 GiB of address space at a time (pages are only backed when first used).
_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_THRESHOLD = -1, -2, -3
_SETTINGS = ((_M_MMAP_THRESHOLD, 1 << 30), (_M_TRIM_THRESHOLD, 2**31 - 1), (_M_TOP_PAD, 1 << 30))
# The largest block a glibc arena of a thread other than the main one serves from its heap
# (HEAP_MAX_SIZE on 64-bit Linux); a larger one is mapped on every allocation.
THREAD_HEAP_LIMIT = 64 << 20


@functools.cache
def keep_freed_memory() -> bool:
  """Sets glibc's malloc to keep freed memory for reuse; returns whether it is set (False where
  the C library has no `mallopt`, e.g. macOS or musl, which keep their own behaviour)."""
  try:
    mallopt = ctypes.CDLL(ctypes.util.find_library('c') or 'libc.so.6').mallopt
  except (OSError, AttributeError):
    return False
  mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
  return all([mallopt(parameter, value) == 1 for parameter, value in _SETTINGS])


def set_cpu_async_dispatch(enabled: bool) -> bool:
  """Sets whether JAX's CPU backend runs each computation on a worker thread while Python goes on
  (True, JAX's default) or on the thread that calls it (False). It must be set before the backend
  starts; returns whether the backend runs as asked (False where it had already started in this
  process the other way, e.g. in a notebook that ran JAX code first).

  On the calling thread a step's working memory comes from the main heap, which keeps it for the
  next step (`keep_freed_memory`) whatever its size: the Fashion-MNIST ConvNet at batch 256 (a
  100 MiB step) trained 1.25-1.40x faster on a 2-core CPU, with 0.7-1.7 s of kernel time instead
  of 7.3-7.7 s. Small steps lose from it: Python no longer prepares the next batch while one runs
  (the digits ConvNet's training loop: 21,000-29,000 images/s instead of 36,000-37,000).
  """
  name = 'jax_cpu_enable_async_dispatch'
  if jax.config.values[name] == enabled:
    return True
  if xla_bridge.backends_are_initialized():
    return False
  jax.config.update(name, enabled)
  return True


def apply_cpu_async_dispatch(setting) -> None:
  """Applies config.speed.cpu_async_dispatch (True or False; any other value is left for the
  config's validation to refuse), and says so where the backend started too early for it to take
  effect."""
  if setting not in (True, False) or set_cpu_async_dispatch(setting):
    return
  print(f'config.speed.cpu_async_dispatch={setting} cannot take effect: JAX\'s CPU backend '
        'already started in this process the other way. Set jax.config.update('
        f'"jax_cpu_enable_async_dispatch", {setting}) before any JAX computation, or run from the '
        'command line.', flush=True)
