"""What one accelerator (a GPU or a TPU) does with cnn_jax: one script, under 10 minutes a chip.

    python experiments/benchmarks/accelerator.py --fashion_dir DIR [--mnist_dir DIR] \\
        [--json results.json] [--quick]

DIR holds the four original IDX files (`train-images-idx3-ubyte.gz`, ...; Debian's
dataset-fashion-mnist installs Fashion-MNIST's in /usr/share/datasets/fashion-mnist). Nothing is
downloaded, and TFDS is not needed. Four measurements, each printed as it finishes:

1. Throughput of MNIST-shaped training (28×28×1, 10 classes): the Keras MNIST convnet and the
   Fashion-MNIST ConvNet at their batch sizes and at batch 1,024 — the train step on batches
   already on the device, the training loop's own runner (uint8 batches from the host, prefetched),
   and evaluation; images/s.
2. Whole-epoch scan against per-step dispatch: the Fashion-MNIST config with its split on the
   device, evaluating once per epoch, an epoch per compiled call (what `steps_per_dispatch` 0
   chooses on an accelerator) against a step per call; images/s of the epochs after the first
   (which compiles).
3. Time to accuracy on the real data, as a user runs it (`train_and_evaluate`, split on the
   device): the seconds until the validation accuracy first reaches 93% (Fashion-MNIST) or 99%
   (MNIST, if --mnist_dir is given), and the test accuracy of the checkpoint chosen on
   validation, scored once at the end. Three recipes for Fashion-MNIST: the shipped config, a
   ResNet that an accelerator affords, and the stretch recipe aimed at 95% test: a ResNet-18
   (four stages of two basic blocks, 64 → 512 filters) with random erasing, label smoothing and
   the test-time flip, 40 epochs.
4. A population of 128 Fashion-MNIST ConvNets in one program against one model: model-images/s
   of the population's step (vmap) against the single model's step.

`--quick` shrinks every measurement to a few steps, to check the script on a CPU (a test does).
On a machine without ml-collections or TFDS installed, cnn_jax runs from a checkout with
ml-collections added (`pip install ml-collections`, or its wheel): the IDX source needs no TFDS.
"""

import argparse
import contextlib
import io
import json
import os
import sys
import tempfile
import time

import jax
import ml_collections

sys.path.insert(0, os.path.dirname(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(__file__), '..', '..', 'tests'))
from conftest import load_config  # pylint: disable=g-import-not-at-top,wrong-import-position
from population_vs_sequential import step_throughput  # pylint: disable=wrong-import-position

from cnn_jax import data  # pylint: disable=wrong-import-position
from cnn_jax.benchmarks import throughput  # pylint: disable=wrong-import-position
from cnn_jax.runtime.writers import read_metrics  # pylint: disable=wrong-import-position
from cnn_jax.training import setup, train  # pylint: disable=wrong-import-position


def on_idx_files(name: str, directory: str) -> ml_collections.ConfigDict:
  """The shipped config `name`, reading the IDX files in `directory` (no TFDS)."""
  config = load_config(name)
  config.data.name, config.data.path = 'idx', directory
  config.progress_bar = False
  return config


def mnist_shaped_throughput(fashion_dir: str, quick: bool) -> list[dict]:
  """Measurement 1: images/s of the train step, the training loop and evaluation."""
  rows = []
  for name in ('mnist', 'fashion_mnist'):
    for batch_size in (0, 256 if quick else 1024):  # 0: the config's own.
      config = on_idx_files(name, fashion_dir)
      config.batch_size = batch_size or config.batch_size
      config.eval_batch_size = max(config.eval_batch_size, config.batch_size)
      with contextlib.redirect_stdout(io.StringIO()):
        measured = throughput.measure(config, num_steps=3 if quick else 200,
                                      warmup=2 if quick else 10, real_data=True)
      rows.append({'config': name, 'batch_size': config.batch_size,
                   **{k: measured[k] for k in ('train_images_per_s', 'train_loop_images_per_s',
                                               'eval_images_per_s', 'train_compile_s')}})
      print(f'  {name:14s} batch {config.batch_size:5,}: train '
            f'{measured["train_images_per_s"]:11,.0f}  train loop '
            f'{measured["train_loop_images_per_s"]:11,.0f}  eval '
            f'{measured["eval_images_per_s"]:11,.0f} images/s', flush=True)
  return rows


def _epoch_rate(workdir: str, batch_size: int) -> float:
  """Images/s between the first and the last evaluation of a run that evaluates every epoch (the
  epochs after the first, which compiles; their evaluations and saves included)."""
  evals = [r for r in read_metrics(workdir) if r['split'] == 'eval']
  first, last = evals[0], evals[-1]
  return (last['step'] - first['step']) * batch_size / (last['time'] - first['time'])


def scan_against_per_step(fashion_dir: str, quick: bool) -> dict:
  """Measurement 2: the same epochs, an epoch per call against a step per call."""
  rates = {}
  for per_dispatch in ('epoch', 1):
    config = on_idx_files('fashion_mnist', fashion_dir)
    config.num_epochs, config.data.on_device = 3.0, True
    if quick:
      config.data.train_split = 'train[:3%]'
    # An epoch per call, as the auto setting does on an accelerator (and forced here on a CPU),
    # with one evaluation and save an epoch and one log a run, so no call ends early.
    config.speed.steps_per_dispatch = _steps_per_epoch(config) if per_dispatch == 'epoch' else 1
    config.eval_every_steps, config.log_every_steps = 0, 10**9
    workdir = tempfile.mkdtemp()
    with contextlib.redirect_stdout(io.StringIO()):
      train.train_and_evaluate(config, workdir)
    rates[per_dispatch] = _epoch_rate(workdir, config.batch_size)
  print(f'  epoch per call {rates["epoch"]:11,.0f} images/s, step per call {rates[1]:11,.0f}; '
        f'ratio {rates["epoch"] / rates[1]:.2f}', flush=True)
  return {'epoch_per_call_images_per_s': rates['epoch'], 'step_per_call_images_per_s': rates[1]}


def _steps_per_epoch(config) -> int:
  """The config's steps per epoch (its training split, less the validation it holds out)."""
  dataset = data.load_dataset(setup.data_spec(config), config.data.train_split,
                              config.data.eval_split)
  return setup.make_plan(config, len(dataset.train)).steps_per_epoch


def _resnet(config):
  """A ResNet for 28×28 images (3×3 stem, stages of 64, 128, 256 filters): more than a 2-core
  CPU affords, little for an accelerator."""
  config.model = ml_collections.ConfigDict({'name': 'resnet_small', 'stage_sizes': (2, 2, 2),
                                            'num_filters': 64})
  config.optimizer.learning_rate, config.num_epochs = 1e-3, 20.0
  return config


def _resnet18(config):
  """The stretch recipe, aimed at 95%: ResNet-18's four stages of two basic blocks (64 → 512
  filters, 3×3 stem for 28×28 images), with the levers of Zhong et al.'s 95.98% (random erasing
  on half the images) and the test-time flip, AdamW with a cosine schedule over 40 epochs."""
  config.model = ml_collections.ConfigDict({'name': 'resnet_small', 'stage_sizes': (2, 2, 2, 2),
                                            'num_filters': 64})
  config.optimizer.name, config.optimizer.weight_decay = 'adamw', 5e-4
  config.optimizer.learning_rate, config.num_epochs = 2e-3, 40.0
  config.augment.erase_probability, config.augment.test_flip = 0.5, True
  config.label_smoothing = 0.1
  return config


# Measurement 3's runs: name -> (shipped config, how the recipe changes it, target accuracy).
RECIPES = {
    'fashion_mnist': ('fashion_mnist', lambda config: config, 0.93),
    'fashion_mnist_resnet': ('fashion_mnist', _resnet, 0.93),
    'fashion_mnist_resnet18': ('fashion_mnist', _resnet18, 0.95),
}
MNIST_RECIPE = ('mnist', lambda config: config, 0.99)


def time_to_accuracy(name: str, directory: str, recipe: tuple, quick: bool) -> dict:
  """Measurement 3: one run as a user runs it; seconds to the recipe's validation accuracy."""
  config_name, change, target = recipe
  config = change(on_idx_files(config_name, directory))
  config.data.on_device = True
  if quick:
    config.data.train_split, config.num_epochs = 'train[:3%]', 1.0
    if config.model.name == 'resnet_small':
      config.model.stage_sizes, config.model.num_filters = (1,) * len(config.model.stage_sizes), 8
  workdir = tempfile.mkdtemp()
  start = time.perf_counter()
  with contextlib.redirect_stdout(io.StringIO()):
    result = train.train_and_evaluate(config, workdir)
  wall = time.perf_counter() - start
  evals = [r for r in read_metrics(workdir) if r['split'] == 'eval']
  reached = next((r for r in evals if r['accuracy'] >= target), None)
  row = {'recipe': name, 'target': target, 'wall_s': wall,
         'seconds_to_target': reached['time'] if reached else None,
         'epochs_to_target': reached['step'] / evals[0]['step'] if reached else None,  # Per epoch.
         'best_validation': max(r['accuracy'] for r in evals),
         'test_accuracy': result['test']['accuracy'] if result['test'] else None}
  print(f'  {name}: {target:.0%} validation '
        + (f'after {row["seconds_to_target"]:.1f} s (epoch {row["epochs_to_target"]:.0f})'
           if reached else f'not reached (best {row["best_validation"]:.2%})')
        + f'; whole run {wall:.1f} s; test {row["test_accuracy"]:.2%} (once, at the end)',
        flush=True)
  return row


def population(fashion_dir: str, quick: bool) -> dict:
  """Measurement 4: 128 members in one vmapped step against one model's step."""
  config = on_idx_files('fashion_mnist', fashion_dir)
  config.speed.population_vectorize = 'vmap'
  size = 4 if quick else 128
  together, single = step_throughput(config, size, 3 if quick else 50)
  print(f'  population of {size}: {together:11,.0f} model-images/s; one model {single:11,.0f}; '
        f'ratio {together / single:.1f}', flush=True)
  return {'size': size, 'population_model_images_per_s': together,
          'single_model_images_per_s': single}


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--fashion_dir', required=True, help="Fashion-MNIST's IDX files.")
  parser.add_argument('--mnist_dir', default='', help="MNIST's IDX files, if there are any.")
  parser.add_argument('--json', default='', help='Also write every figure to this JSON file.')
  parser.add_argument('--quick', action='store_true', help='A few steps of each, to check it.')
  parser.add_argument('--only', default='1234', help='The measurements to run, e.g. 13.')
  args = parser.parse_args()
  for flag, directory in (('--fashion_dir', args.fashion_dir), ('--mnist_dir', args.mnist_dir)):
    if directory and not os.path.isdir(directory):
      parser.error(f'{flag} {directory}: no such directory (it should hold the four IDX files, '
                   'e.g. /usr/share/datasets/fashion-mnist from dataset-fashion-mnist)')
  device = jax.devices()[0]
  print(f'{jax.device_count()} × {device.platform.upper()} ({device.device_kind}), '
        f'jax {jax.__version__}', flush=True)
  results = {'device': device.device_kind, 'jax': jax.__version__}
  if '1' in args.only:
    print('1. MNIST-shaped throughput', flush=True)
    results['throughput'] = mnist_shaped_throughput(args.fashion_dir, args.quick)
  if '2' in args.only:
    print('2. Whole-epoch scan against per-step dispatch (Fashion-MNIST, split on the device)',
          flush=True)
    results['dispatch'] = scan_against_per_step(args.fashion_dir, args.quick)
  if '3' in args.only:
    print('3. Time to accuracy on the real data', flush=True)
    runs = [time_to_accuracy(name, args.fashion_dir, recipe, args.quick)
            for name, recipe in RECIPES.items()]
    if args.mnist_dir:
      runs.append(time_to_accuracy('mnist', args.mnist_dir, MNIST_RECIPE, args.quick))
    results['time_to_accuracy'] = runs
  if '4' in args.only:
    print('4. A population against one model', flush=True)
    results['population'] = population(args.fashion_dir, args.quick)
  if args.json:
    with open(args.json, 'w', encoding='utf-8') as f:
      json.dump(results, f, indent=1)


if __name__ == '__main__':
  main()
