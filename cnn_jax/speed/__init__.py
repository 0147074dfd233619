"""Speed: every way cnn_jax computes the same numbers faster, resolved once for the run's platform.

The models and the steps are written as the textbook draws them; this package is the one layer
that makes them fast. `config.speed` holds its settings (each defined, with the reason for its
default, in `cnn_jax/configs/default.py`); `resolve` turns them, on the run's platform, into a
frozen `Speed` that the rest of the run receives. 'auto' is decided here and nowhere else.

    speed = resolve(config.speed, jax.devices()[0].platform)
    model = create_model(..., layer_set=speed.layer_set)       # faster layers, same numbers
    step = jax.jit(train_step, compiler_options=speed.compiler_options())

What it owns:
- `fast_layers`: pooling by reshape, batch norm by matrix products, the pool-first conv block;
- `cpu_kernels`: the CPU matrix kernels of the train steps (YNNPACK or XLA's own);
- `host_memory`: freed memory kept for the next step, and steps on the calling thread;
- how many training steps one compiled call runs, and how a population's members are stepped.

A new trick touches this package, its `config.speed` field and its test (tests/test_speed.py).
"""

import dataclasses
from collections.abc import Mapping, Sequence

from cnn_jax.models import layers
from cnn_jax.speed import cpu_kernels, host_memory
from cnn_jax.speed.fast_layers import MatmulBatchNorm, ReshapePool, SplitBiasConv, pool_first_block

AUTO = 'auto'
# Settings that are True, False or 'auto' (on where they were measured to win: on CPU).
_SWITCHES = ('pool_first', 'pool_by_reshape', 'batch_norm_by_matmul', 'keep_freed_memory')
VECTORIZE = ('auto', 'vmap', 'loop')


@dataclasses.dataclass(frozen=True)
class Speed:
  """How a run computes, with every 'auto' decided for its platform.

  Attributes:
    platform: 'cpu', 'gpu' or 'tpu'.
    cpu_kernels: the train steps' matrix kernels on CPU, one of `cpu_kernels.CPU_KERNELS`.
    pool_first: ConvNet blocks train as conv ─► max pool ─► bias ─► activation.
    pool_by_reshape: non-overlapping pooling by crop + reshape (`fast_layers.ReshapePool`).
    batch_norm_by_matmul: batch statistics as matrix products (`fast_layers.MatmulBatchNorm`).
    keep_freed_memory: freed host memory is kept for the next step (`host_memory`).
    cpu_async_dispatch: CPU steps run on a worker thread (JAX's default) or the calling one.
    steps_per_dispatch: training steps per compiled call with the data on the device; 0 = as
      many as the plan allows (`steps_per_call`).
    population_vectorize: 'vmap' (one batched step) or 'loop' (members one after another).
  """
  platform: str
  cpu_kernels: str = 'xla'
  pool_first: bool = False
  pool_by_reshape: bool = False
  batch_norm_by_matmul: bool = False
  keep_freed_memory: bool = False
  cpu_async_dispatch: bool = True
  steps_per_dispatch: int = 1
  population_vectorize: str = 'vmap'

  @property
  def layer_set(self) -> layers.LayerSet:
    """The layers a model builds from: the textbook's, with this run's faster equals in."""
    return layers.LayerSet(
        conv=SplitBiasConv if self.pool_first else layers.TEXTBOOK.conv,
        norm=MatmulBatchNorm if self.batch_norm_by_matmul else layers.TEXTBOOK.norm,
        pool=ReshapePool if self.pool_by_reshape else layers.TEXTBOOK.pool,
        block=pool_first_block if self.pool_first else layers.TEXTBOOK.block)

  def compiler_options(self) -> dict[str, str] | None:
    """XLA's `compiler_options` for a jitted train step (None: XLA's defaults)."""
    if self.platform != 'cpu':
      return None
    return cpu_kernels.compiler_options(self.cpu_kernels)

  def steps_per_call(self, on_device: bool, per_epoch: int, periods: Sequence[int] = ()) -> int:
    """Training steps one compiled call runs: `steps_per_dispatch` if set; for 0, with the data
    on a GPU or TPU, an epoch or the shortest of `periods` (the steps between logs, evaluations
    and saves) if fewer, so a call ends at each stop and a shorter one rarely skips steps; 1
    otherwise. XLA:CPU runs convolutions inside a loop several times slower than the same step
    called from Python (experiments/benchmarks/RESULTS.md), so a CPU never scans by itself."""
    if self.steps_per_dispatch:
      return self.steps_per_dispatch
    if not on_device or self.platform == 'cpu':
      return 1
    return min([per_epoch] + [p for p in periods if p])

  def advice(self, step_memory_mib: float) -> str | None:
    """What to change for a train step that needs `step_memory_mib` of working memory to run
    faster, or None: on CPU, a step over what a worker thread's heap keeps is mapped afresh each
    time, which the calling thread's heap avoids (`host_memory`)."""
    limit = host_memory.THREAD_HEAP_LIMIT
    if self.platform != 'cpu' or not self.cpu_async_dispatch or step_memory_mib * 2**20 <= limit:
      return None
    return (f'The step needs more working memory than the {limit >> 20} MiB a worker thread\'s '
            'heap keeps, so each step maps it afresh: --config.speed.cpu_async_dispatch=False '
            'may train faster (README, "Training").')

  def apply(self) -> None:
    """Applies the process-wide settings (freed memory kept) that resolving only decided."""
    if self.keep_freed_memory:
      host_memory.keep_freed_memory()


def before_backend(settings: Mapping) -> None:
  """Applies what must be set before JAX's backend starts (`cpu_async_dispatch`); call it before
  the first `jax.devices()`. A value `problems` refuses is left for the config check."""
  host_memory.apply_cpu_async_dispatch(settings['cpu_async_dispatch'])


def resolve(settings: Mapping, platform: str) -> Speed:
  """Returns `config.speed` (`settings`) as a `Speed` for `platform`, every 'auto' decided: the
  CPU tricks on a CPU only, where they were measured to win (nothing yet shows they do on a GPU
  or TPU; True forces one anywhere); a population looped on a CPU, where vmap's grouped
  convolutions run no faster per model, and vmapped elsewhere."""
  on_cpu = platform == 'cpu'
  switches = {name: on_cpu if settings[name] == AUTO else bool(settings[name])
              for name in _SWITCHES}
  vectorize = settings['population_vectorize']
  if vectorize == AUTO:
    vectorize = 'loop' if on_cpu else 'vmap'
  return Speed(platform=platform, cpu_kernels=settings['cpu_kernels'], **switches,
               cpu_async_dispatch=settings['cpu_async_dispatch'],
               steps_per_dispatch=settings['steps_per_dispatch'],
               population_vectorize=vectorize)


def textbook(platform: str) -> Speed:
  """No trick anywhere: the models' own layers and XLA's default kernels."""
  return Speed(platform=platform)


def problems(settings: Mapping, on_device: bool) -> list[str]:
  """What is wrong with `config.speed` (`settings`), one line a problem; [] when nothing is.
  `on_device`: config.data.on_device, which several steps per call need."""
  found = []

  def check(name, allowed):
    if settings[name] not in allowed:
      found.append(f'config.speed.{name}={settings[name]!r} is not one of '
                   + ', '.join(map(str, allowed)))

  check('cpu_kernels', cpu_kernels.CPU_KERNELS)
  for name in _SWITCHES:
    check(name, (True, False, AUTO))
  check('cpu_async_dispatch', (True, False))
  check('population_vectorize', VECTORIZE)
  per_call = settings['steps_per_dispatch']
  if isinstance(per_call, bool) or not isinstance(per_call, int) or per_call < 0:
    found.append(f'config.speed.steps_per_dispatch={per_call!r} must be an integer ≥ 0')
  elif per_call > 1 and not on_device:
    found.append(f'config.speed.steps_per_dispatch={per_call} runs several steps per call on '
                 'data held on the device: also set config.data.on_device=True')
  return found
