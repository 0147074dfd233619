"""The benchmark tool measures real steps and reports every figure."""

from cnn_jax import benchmark
from conftest import load_config


def test_benchmark_reports_compile_time_and_throughput():
  config = load_config('digits')
  results = benchmark.measure(config, num_steps=3, warmup=1, real_data=True)
  assert set(results) == {'load_images_per_s', 'host_batches_images_per_s', 'train_compile_s', 'train_images_per_s',
                          'eval_compile_s', 'eval_images_per_s'}
  assert all(value > 0 for value in results.values())
