"""The benchmark tool measures real steps and reports every figure."""

import json
import subprocess
import sys
import time

import pytest

from cnn_jax.benchmarks import throughput
from cnn_jax.speed import host_memory
from conftest import load_config


def test_benchmark_reports_compile_time_and_throughput():
  config = load_config('digits')
  started = time.perf_counter()
  results = throughput.measure(config, num_steps=3, warmup=1, real_data=True, started=started)
  assert set(results) == {'load_images_per_s', 'host_batches_images_per_s', 'train_compile_s',
                          'first_step_s', 'train_images_per_s', 'train_loop_images_per_s',
                          'train_gflop_per_s', 'matmul_gflop_per_s', 'train_fraction_of_matmul',
                          'eval_compile_s', 'eval_images_per_s', 'train_step_memory_mib'}
  assert all(value > 0 for value in results.values())
  # XLA's working memory for the step: a few MiB for 64 digits, far below a worker thread's heap.
  assert results['train_step_memory_mib'] * 2**20 < host_memory.THREAD_HEAP_LIMIT / 8
  # XLA's count for the step: the digits net's forward pass is 697,860 FLOPs an image (the
  # summary's); training adds the backward pass, about twice that, and the optimizer.
  per_image = results['train_gflop_per_s'] * 1e9 / results['train_images_per_s']
  assert 2 * 697_860 < per_image < 5 * 697_860
  assert results['train_fraction_of_matmul'] == pytest.approx(
      results['train_gflop_per_s'] / results['matmul_gflop_per_s'])
  # The first step waits for the compilation, and everything waits less than the whole call.
  assert results['train_compile_s'] < results['first_step_s'] < time.perf_counter() - started


def test_the_command_prints_the_real_loop_beside_the_device_fed_rate():
  result = subprocess.run([sys.executable, '-m', 'cnn_jax.benchmark', '--config', 'digits',
                           '--steps', '3', '--warmup', '1', '--json'], capture_output=True,
                          text=True, timeout=300, check=True)
  results = json.loads(result.stdout.splitlines()[-1])
  assert results['train_loop_images_per_s'] > 0 and results['train_images_per_s'] > 0
  assert 0 < results['train_compile_s'] < results['first_step_s']


def test_benchmark_times_a_stream_alone():
  config = load_config('digits')
  config.data.stream = True
  batches, results = throughput.host_batches(config, num_steps=4, real_data=True)
  assert len(batches) == 4 and batches[0]['image'].shape == (config.batch_size, 8, 8, 1)
  assert set(results) == {'stream_open_s', 'stream_first_batch_s', 'host_batches_images_per_s'}
  assert all(value > 0 for value in results.values())


def test_the_command_says_when_a_step_needs_more_memory_than_a_worker_threads_heap():
  def run(*extra):
    return subprocess.run(
        [sys.executable, '-m', 'cnn_jax.benchmark', '--config', 'digits', '--steps', '2',
         '--warmup', '1', '--config.batch_size=8192', *extra],  # About 200 MiB a step.
        capture_output=True, text=True, timeout=300, check=True).stdout
  hint = '--config.speed.cpu_async_dispatch=False may train faster'
  assert hint in run()
  assert hint not in run('--config.speed.cpu_async_dispatch=False')
