"""Freed host memory kept in the process for the next step, instead of going back to the OS.

Why: on CPU every train step allocates and frees XLA's large temporaries (the patches of a 3×3
convolution over 128 maps of 28×28×32 would take 115 MB). glibc's malloc serves blocks that
large with mmap and unmaps them when freed, so the next step faults every page back in, zeroed by
the kernel: on the 2-core CPU the Fashion-MNIST ConvNet spent 45% of its wall time in the kernel
(170 s of a 380 s run). Raising malloc's mmap and trim thresholds keeps freed blocks in its heap
for reuse: the same config then trained 1.26–1.74× faster (median 1.33), with 0.8 s of sys time
in a benchmark where it had 6.3.
The price is that the process keeps its peak memory until it ends.

What this cannot reach: XLA's worker threads allocate from glibc's per-thread arenas, whose heaps
hold at most 64 MiB, so a larger block (the ResNet recipe's 70 MB of step memory) is mapped and
unmapped every step whatever the thresholds. `MALLOC_ARENA_MAX=1` in the environment at
start-up avoids that (every thread then shares the main heap), but it slowed the small ConvNet by
about 15%, so it is left to the user (README, "Training").

`config.keep_freed_memory` ('auto': on CPU, where device buffers are host memory) asks for it;
it changes process-wide allocator settings, once, and only where the C library is glibc.
"""

import ctypes
import ctypes.util
import functools

# mallopt's parameters (malloc.h) and the values set: blocks up to 1 GiB come from the heap, up
# to 2 GiB of free heap (the largest value an int holds) stays in the process, and the heap grows
# by 1 GiB of address space at a time (pages are only backed when first used).
_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_THRESHOLD = -1, -2, -3
_SETTINGS = ((_M_MMAP_THRESHOLD, 1 << 30), (_M_TRIM_THRESHOLD, 2**31 - 1), (_M_TOP_PAD, 1 << 30))


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


def apply(setting, platform: str) -> bool:
  """Applies config.keep_freed_memory (True, False or 'auto' = on CPU) on `platform`; returns
  whether freed memory is now kept."""
  wanted = platform == 'cpu' if setting == 'auto' else bool(setting)
  return keep_freed_memory() if wanted else False
