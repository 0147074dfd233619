"""Several processes (hosts) as one JAX runtime, through `jax.distributed`, not a launcher.

Every process runs the same command. On TPU pods and SLURM, JAX finds its peers by itself; on
plain machines, give each process `--coordinator_address=HOST:PORT --num_processes=N
--process_id=I`. Afterwards `jax.devices()` lists every device of every process, and one `Mesh`
over them makes the training step data-parallel across hosts.
"""

import os

import jax
import numpy as np
from jax.experimental import multihost_utils

from cnn_jax.errors import UserError


def _cluster_detected() -> bool:
  # Environments where jax.distributed.initialize() finds its peers without arguments.
  return (int(os.environ.get('SLURM_NTASKS', '1')) > 1
          or 'TPU_WORKER_HOSTNAMES' in os.environ or 'MEGASCALE_COORDINATOR_ADDRESS' in os.environ)


def initialize(coordinator_address: str | None = None, num_processes: int | None = None,
               process_id: int | None = None) -> None:
  """Joins the processes into one runtime if asked to (or on a detected cluster); else nothing.

  Must run before anything touches a JAX device.

  Raises:
    UserError: only some of the three explicit settings are given.
  """
  explicit = (coordinator_address, num_processes, process_id)
  if all(value is None for value in explicit):
    if _cluster_detected():
      jax.distributed.initialize()
    return
  if any(value is None for value in explicit):
    raise UserError('multi-process runs need all of --coordinator_address, --num_processes and '
                    '--process_id (or none of them on TPU pods and SLURM, which JAX detects).')
  # CPU devices of different processes talk through gloo (GPUs and TPUs have their own links;
  # the setting only concerns CPU devices, and must be made before the backend starts).
  jax.config.update('jax_cpu_collectives_implementation', 'gloo')
  jax.distributed.initialize(coordinator_address=coordinator_address,
                             num_processes=num_processes, process_id=process_id)


def is_main_process() -> bool:
  """True in the one process that prints and writes metrics (process 0)."""
  return jax.process_index() == 0


def log(*args, **kwargs) -> None:
  """print(), in process 0 only: a multi-host run speaks once."""
  if is_main_process():
    print(*args, **{'flush': True, **kwargs})


def any_process(flags: list[bool]) -> list[bool]:
  """Each of `flags`, true if it is true in any process (a collective: every process must call it
  at the same point). With one process, `flags` as they are, at no cost."""
  if jax.process_count() == 1:
    return list(flags)
  gathered = multihost_utils.process_allgather(np.asarray(flags, np.int32))  # [P, len(flags)]
  return [bool(x) for x in np.asarray(gathered).reshape(-1, len(flags)).any(axis=0)]


def to_global(batch: dict[str, np.ndarray], sharding) -> dict:
  """Turns an identical-in-every-process host batch into a global array sharded along 'data'.

  Each process contributes only its own rows (process i of n: rows i·B/n to (i+1)·B/n), which
  its local devices then hold; with one process this is a plain transfer to the devices.
  """
  count, index = jax.process_count(), jax.process_index()
  def local(array):
    rows = len(array) // count
    return np.ascontiguousarray(array[index * rows:(index + 1) * rows])
  return {key: jax.make_array_from_process_local_data(sharding, local(value), value.shape)
          for key, value in batch.items()}


def from_local(batch: dict[str, np.ndarray], sharding) -> dict:
  """Turns this process's own rows of a batch into a global array sharded along 'data'.

  For data each process reads by itself (a streamed shard): the global batch is the processes'
  rows in process order, P times the local batch.
  """
  count = jax.process_count()
  return {key: jax.make_array_from_process_local_data(sharding, value,
                                                      (len(value) * count, *value.shape[1:]))
          for key, value in batch.items()}


def replicate(array: np.ndarray, sharding) -> jax.Array:
  """A host array present in every process, as one global array replicated on every device."""
  return jax.make_array_from_process_local_data(sharding, array, array.shape)
