"""Measure a config's speed: compile seconds, steady-state train and eval images/s.

    python -m cnn_jax.benchmark --config mnist [--steps 50] [--data real|synthetic]
        [--against torch] [--target_accuracy 0.97 [--max_epochs 20]]

Warm-up steps (which include compilation) are excluded from the throughput figures; `first step`
is the wait for the first one, from the command's start (imports, data, model and compilation
included). `train` feeds batches already on the device; `train loop` runs the training loop's
own step runner, which assembles each batch on the host and transfers it. `train GFLOP/s` is
XLA's count of the compiled step's operations per second, beside what a float32 matrix product
reaches on the same device in the same run (`matmul`): their ratio says what share of the
machine the step uses. By default
the batches are random images of the config's shape, so any config can be measured offline; with
`--data real` they come from the dataset, and host-side batch assembly is timed on its own too.

`--against torch` also times a plain PyTorch version of the model on the same batches (see
`cnn_jax.benchmarks.torch_reference`) and prints cnn_jax / PyTorch ratios. `--target_accuracy`
trains on the config's real dataset until the eval accuracy reaches it (see
`cnn_jax.benchmarks.time_to_accuracy`).
"""

import json
import time

STARTED = time.perf_counter()  # Before anything else is imported: the user's wait starts here.

from absl import flags  # pylint: disable=g-import-not-at-top,wrong-import-position
from ml_collections import config_flags  # pylint: disable=g-import-not-at-top,wrong-import-position

from cnn_jax import cli  # pylint: disable=g-import-not-at-top,wrong-import-position



def define_flags() -> None:
  """Defines this command's flags (only when it runs, so the module imports anywhere)."""
  config_flags.DEFINE_config_file('config', None, 'Config file to measure.', lock_config=True)
  flags.DEFINE_integer('steps', 50, 'Timed steps (after warm-up).', lower_bound=1)
  flags.DEFINE_integer('warmup', 5, 'Untimed steps run first (compilation included).',
                       lower_bound=1)
  flags.DEFINE_enum('data', 'synthetic', ['synthetic', 'real'],
                    'Random batches of the right shape, or batches from the dataset.')
  flags.DEFINE_enum('against', 'none', ['torch', 'none'],
                    'Also measure a plain PyTorch version of the model (ConvNet family only).')
  flags.DEFINE_float('target_accuracy', 0.0, 'If > 0, also time training on the real dataset '
                     'until the eval accuracy reaches this.', lower_bound=0.0, upper_bound=1.0)
  flags.DEFINE_integer('max_epochs', 20, 'Give up on --target_accuracy after this many epochs.',
                       lower_bound=1)
  flags.DEFINE_bool('input_only', False, 'Time the input pipeline alone on the real dataset '
                    '(with --config.data.stream=True: the stream); no model is run.')
  flags.DEFINE_bool('json', False, 'Print one JSON object instead of a table.')
  flags.mark_flag_as_required('config')


def _print_rows(results: dict[str, float]) -> None:
  for key, value in results.items():
    if key.endswith('_gflop_per_s'):
      print(f'  {key.removesuffix("_gflop_per_s").replace("_", " "):<20}{value:>10,.1f} GFLOP/s')
    elif key.endswith('_fraction_of_matmul'):
      print(f'  {key.removesuffix("_fraction_of_matmul") + " / matmul":<20}{value:>10.0%}')
    elif key.endswith('_mib'):
      print(f'  {key.removesuffix("_mib").replace("_", " "):<20}{value:>10,.1f} MiB')
    elif key.endswith('_images_per_s'):
      print(f'  {key.removesuffix("_images_per_s").replace("_", " "):<20}{value:>10,.0f} images/s')
    else:
      print(f'  {key.removesuffix("_s").replace("_", " "):<20}{value:>10.2f} s')


def _print_time_to_target(results: dict, eval_split: str, max_epochs: int) -> None:
  print(f'Time to {results["target_accuracy"]:.1%} {eval_split} accuracy, evaluated every epoch '
        f'(at most {max_epochs}); the clock includes compilation, batches and evaluation:')
  for name, prefix in (('cnn_jax', ''), ('PyTorch', 'torch_')):
    if f'{prefix}time_to_target_epochs' not in results:
      continue
    seconds, epochs, accuracy = (results[f'{prefix}time_to_target_{k}']
                                 for k in ('s', 'epochs', 'accuracy'))
    compile_s = results.get(f'{prefix}time_to_target_compile_s')
    if seconds is None:
      print(f'  {name:<10}not reached in {epochs} epochs (last accuracy {accuracy:.2%})')
    else:
      print(f'  {name:<10}{seconds:>7.1f} s after {epochs} epoch(s), accuracy {accuracy:.2%}'
            + (f' ({compile_s:.1f} s of it compiling)' if compile_s is not None else ''))


def main(argv: list[str]) -> None:
  del argv  # cli.run refuses any.
  args = flags.FLAGS
  config = cli.parsed_config()
  # Imported once the flags are parsed: --help and flag mistakes answer without loading JAX.
  # pylint: disable=g-import-not-at-top
  import jax
  from cnn_jax import speed
  from cnn_jax.benchmarks import throughput, torch_reference
  from cnn_jax.training import setup
  # pylint: enable=g-import-not-at-top
  speed.before_backend(config.speed)  # Before JAX's CPU backend.
  against_torch = args.against == 'torch'
  if against_torch:  # Fail now, not after the cnn_jax measurement: no torch, or not a ConvNet.
    torch_reference.check_config(config)
  inputs = throughput.host_batches(config, args.steps, args.data == 'real' or args.input_only)
  if args.input_only and args.json:
    print(json.dumps({k: round(v, 3) for k, v in inputs[1].items()}))
    return
  if args.input_only:
    print(f'Input pipeline of {config.data.name}, batch {config.batch_size}, {args.steps} batches '
          f'({"streamed" if config.data.stream else "from memory"})')
    _print_rows(inputs[1])
    return
  results = throughput.measure(config, args.steps, args.warmup, args.data == 'real', inputs,
                               STARTED)
  compared = (throughput.compare_with_torch(config, args.steps, args.warmup, inputs, results)
              if against_torch else {})
  reached = (throughput.time_to_target(config, args.target_accuracy, args.max_epochs, against_torch)
             if args.target_accuracy > 0 else {})
  if args.json:
    print(json.dumps({k: round(v, 3) if isinstance(v, float) else v
                      for k, v in {**results, **compared, **reached}.items()}))
    return
  device = jax.devices()[0]
  print(f'{config.model.name} on {config.data.name}, batch {config.batch_size}, {args.data} data, '
        f'{jax.device_count()} × {device.platform.upper()}; {args.steps} timed steps')
  _print_rows(results)
  advice = setup.build_speed(config).advice(results.get('train_step_memory_mib', 0))
  if advice:
    print(advice)
  if compared:
    torch = torch_reference.import_torch()
    print(f'PyTorch {torch.__version__} reference (eager, float32, NCHW, '
          f'{torch.get_num_threads()} threads)')
    _print_rows({k.removeprefix('torch_'): v for k, v in compared.items()
                 if k.startswith('torch_') and not k.startswith('torch_compile')})
    print(f'cnn_jax / PyTorch images/s: train {compared["train_ratio"]:.2f}×, '
          f'eval {compared["eval_ratio"]:.2f}×')
    if 'torch_compile_error' in compared:
      print(f'torch.compile does not work here: {compared["torch_compile_error"]}')
    else:
      print('PyTorch through torch.compile (its first step compiles):')
      _print_rows({k.removeprefix('torch_compiled_'): v for k, v in compared.items()
                   if k.startswith('torch_compiled_')})
      print(f'cnn_jax / torch.compile train images/s: {compared["compiled_train_ratio"]:.2f}×')
  if reached:
    _print_time_to_target(reached, config.data.eval_split, args.max_epochs)


if __name__ == '__main__':
  define_flags()
  cli.run(main)
