"""Several processes (hosts) as one JAX runtime, through `jax.distributed`, not a launcher.

Every process runs the same command. On TPU pods, SLURM and Open MPI jobs, JAX finds its peers by
itself (`--cluster` names the kind where it should look, e.g. mpi4py, which JAX only uses when
asked); on plain machines, give each process `--coordinator_address=HOST:PORT
--num_processes=N --process_id=I`. `--local_device_ids` gives a process some of a host's
accelerators (one process per GPU). Afterwards `jax.devices()` lists every device of every
process, and one `Mesh` over them makes the training step data-parallel across hosts.
"""

import os
import secrets

import jax
import numpy as np
from jax.experimental import multihost_utils

from cnn_jax.errors import UserError


def _cluster_detected() -> bool:
  """A job of several processes that jax.distributed.initialize() joins without arguments. (JAX
  would also take a job of one process, or any Kubernetes pod, for a cluster: those run alone.)"""
  return (int(os.environ.get('SLURM_NTASKS', '1')) > 1
          or int(os.environ.get('OMPI_COMM_WORLD_SIZE', '1')) > 1
          or 'TPU_WORKER_HOSTNAMES' in os.environ or 'MEGASCALE_COORDINATOR_ADDRESS' in os.environ)


def initialize(coordinator_address: str | None = None, num_processes: int | None = None,
               process_id: int | None = None, cluster: str = 'auto',
               local_device_ids: list[int] | None = None) -> None:
  """Joins the processes into one runtime if asked to (or on a detected cluster); else nothing.

  `cluster`: 'auto' (a job of several processes that JAX recognises), 'none' (one process, even
  inside such a job), or one of JAX's cluster kinds ('slurm', 'ompi', 'mpi4py', 'tpu', 'gcetpu',
  'gketpu'), looked for alone. Must run before anything touches a JAX device.

  Raises:
    UserError: only some of the three explicit settings are given, or the named cluster is not
      one JAX can join from here.
  """
  explicit = (coordinator_address, num_processes, process_id)
  devices = {'local_device_ids': local_device_ids} if local_device_ids else {}
  if all(value is None for value in explicit):
    if cluster == 'none' or (cluster == 'auto' and not _cluster_detected()):
      return
    method = {} if cluster == 'auto' else {'cluster_detection_method': cluster}
    try:
      jax.distributed.initialize(**method, **devices)
    except (ValueError, RuntimeError, KeyError) as e:  # KeyError: a variable the kind needs.
      raise UserError(f'--cluster={cluster}: JAX cannot join the processes of this job '
                      f'({type(e).__name__}: {str(e).splitlines()[0]}); on plain machines give '
                      '--coordinator_address, --num_processes and --process_id instead.') from None
    return
  if any(value is None for value in explicit):
    raise UserError('multi-process runs need all of --coordinator_address, --num_processes and '
                    '--process_id (or none of them in a job JAX detects: TPU pods, SLURM, Open '
                    'MPI, or --cluster).')
  # CPU devices of different processes talk through gloo (GPUs and TPUs have their own links;
  # the setting only concerns CPU devices, and must be made before the backend starts).
  jax.config.update('jax_cpu_collectives_implementation', 'gloo')
  jax.distributed.initialize(coordinator_address=coordinator_address,
                             num_processes=num_processes, process_id=process_id, **devices)


def check_same_workdir(workdir: str) -> None:
  """With several processes, checks that they were all given the same workdir and that each sees
  what process 0 writes there: their checkpoints are written together, so a process writing
  elsewhere would wait for the others forever, or restore another run. A collective: every
  process must call it.

  Raises:
    UserError (in every process): the paths differ, or the directory is not one shared
      filesystem (mount a shared disk, NFS or a bucket on every host).
  """
  if jax.process_count() == 1:
    return
  path = os.path.abspath(workdir)
  paths = _gather_text(path)
  if len(set(paths)) > 1:
    raise UserError('the processes were given different workdirs: '
                    + ', '.join(f'process {i}: {p}' for i, p in enumerate(paths))
                    + '. Give every process the same --workdir, on a filesystem they share.')
  token = os.path.join(path, '.cnn_jax_shared_check')
  nonce = secrets.token_hex(8)
  if is_main_process():
    os.makedirs(path, exist_ok=True)
    with open(token, 'w', encoding='utf-8') as f:
      f.write(nonce)
  written = _gather_text(nonce)[0]  # Also a barrier: process 0 has written the file.
  try:
    with open(token, encoding='utf-8') as f:
      seen = f.read() == written
  except OSError:
    seen = False
  blind = [i for i, ok in enumerate(_gather_text('1' if seen else '0')) if ok != '1']
  if is_main_process():
    os.remove(token)
  if blind:
    raise UserError(f'process(es) {", ".join(map(str, blind))} cannot see the files process 0 '
                    f'writes in {path}: the workdir must be one filesystem that every host '
                    'shares (a shared disk, NFS, or a mounted bucket).')


def _gather_text(text: str, size: int = 4096) -> list[str]:
  """`text` of every process, in process order (a collective)."""
  encoded = np.zeros(size, np.uint8)
  raw = text.encode('utf-8')[:size]
  encoded[:len(raw)] = np.frombuffer(raw, np.uint8)
  gathered = np.asarray(multihost_utils.process_allgather(encoded)).reshape(-1, size)
  return [bytes(row).rstrip(b'\0').decode('utf-8', 'replace') for row in gathered]


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
