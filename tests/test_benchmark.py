"""The benchmark tool measures real steps and reports every figure."""

from cnn_jax.benchmarks import throughput
from conftest import load_config


def test_benchmark_reports_compile_time_and_throughput():
  config = load_config('digits')
  results = throughput.measure(config, num_steps=3, warmup=1, real_data=True)
  assert set(results) == {'load_images_per_s', 'host_batches_images_per_s', 'train_compile_s', 'train_images_per_s',
                          'eval_compile_s', 'eval_images_per_s'}
  assert all(value > 0 for value in results.values())


def test_benchmark_times_a_stream_alone():
  config = load_config('digits')
  config.data.stream = True
  batches, results = throughput.host_batches(config, num_steps=4, real_data=True)
  assert len(batches) == 4 and batches[0]['image'].shape == (config.batch_size, 8, 8, 1)
  assert set(results) == {'stream_open_s', 'stream_first_batch_s', 'host_batches_images_per_s'}
  assert all(value > 0 for value in results.values())
