"""Freed host memory kept for the next step (config.speed.keep_freed_memory, and for steps
needing over 64 MiB config.speed.cpu_async_dispatch=False): fewer page faults."""

import json
import subprocess
import sys

import jax
import pytest

from cnn_jax import speed
from cnn_jax.configs import default
from cnn_jax.speed import host_memory
from conftest import REPO

# A child process (malloc's settings are process-wide): 30 steps of a convolution's forward and
# backward pass on a batch of Fashion-MNIST-sized feature maps, whose temporaries are megabytes
# each; it prints the minor page faults of those steps and the step's working memory.
_STEPS = """
import json, resource, sys
import jax, jax.numpy as jnp
from cnn_jax.speed import host_memory
keep, batch, asynchronous = json.loads(sys.argv[1])
assert host_memory.set_cpu_async_dispatch(asynchronous)
kept = host_memory.keep_freed_memory() if keep else False
x = jnp.ones((batch, 28, 28, 32))
w = jnp.ones((3, 3, 32, 64)) * 0.01
def loss(w, x):
  y = jax.lax.conv_general_dilated(x, w, (1, 1), 'SAME',
                                   dimension_numbers=('NHWC', 'HWIO', 'NHWC'))
  return jnp.sum(jnp.tanh(y))
step = jax.jit(jax.grad(loss))
memory = step.lower(w, x).compile().memory_analysis().temp_size_in_bytes
jax.block_until_ready(step(w, x))
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(30):
  w = w - 1e-6 * step(w, x)
jax.block_until_ready(w)
print(json.dumps({'kept': kept, 'memory': memory,
                  'faults': resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before}))
"""


def _faults(keep, batch: int = 128, asynchronous: bool = True) -> dict:
  done = subprocess.run([sys.executable, '-c', _STEPS, json.dumps([keep, batch, asynchronous])],
                        capture_output=True, text=True, timeout=300, check=True)
  return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not host_memory.keep_freed_memory(), reason='the C library is not glibc')
def test_kept_memory_is_reused_without_faulting_its_pages_back_in():
  kept, returned = _faults(True), _faults(False)
  assert kept['kept'] and not returned['kept']
  # Returned to the OS, every step's temporaries fault in anew (thousands of pages a step).
  assert returned['faults'] > 30 * 1000
  assert kept['faults'] < returned['faults'] / 4  # 8.8× fewer, measured.


def test_auto_keeps_freed_memory_on_cpu_only():
  settings = default.get_config().speed
  assert speed.resolve(settings, 'cpu').keep_freed_memory
  assert not speed.resolve(settings, 'gpu').keep_freed_memory
  settings.keep_freed_memory = False
  assert not speed.resolve(settings, 'cpu').keep_freed_memory


@pytest.mark.skipif(not host_memory.keep_freed_memory(), reason='the C library is not glibc')
def test_a_step_over_a_worker_threads_heap_keeps_its_memory_when_run_on_the_calling_thread():
  on_worker, on_caller = _faults(True, 160, True), _faults(True, 160, False)
  assert on_worker['memory'] > host_memory.THREAD_HEAP_LIMIT  # A step glibc maps afresh...
  assert on_worker['faults'] > 30 * 1000  # ...faulting its pages in every time,
  assert on_caller['faults'] < on_worker['faults'] / 4  # unless on the calling thread: 23× fewer.


def test_dispatch_cannot_change_once_the_backend_has_started(capsys):
  jax.devices()  # Started here with JAX's default, asynchronous dispatch.
  assert host_memory.set_cpu_async_dispatch(True)
  assert not host_memory.set_cpu_async_dispatch(False)
  host_memory.apply_cpu_async_dispatch(False)
  assert 'cpu_async_dispatch=False cannot take effect' in capsys.readouterr().out


def test_steps_on_the_calling_thread_compute_the_same_numbers(tmp_path):
  records = {}
  for asynchronous in (True, False):
    workdir = tmp_path / str(asynchronous)
    subprocess.run([sys.executable, '-m', 'cnn_jax.main', '--config', 'configs/digits.py',
                    '--workdir', str(workdir), '--config.num_steps=60',
                    f'--config.speed.cpu_async_dispatch={asynchronous}'],
                   cwd=REPO, capture_output=True, text=True, timeout=300, check=True)
    records[asynchronous] = [{k: v for k, v in json.loads(line).items() if k != 'time'}
                             for line in open(workdir / 'metrics.jsonl', encoding='utf-8')]
  assert len(records[True]) > 3 and records[True] == records[False]
