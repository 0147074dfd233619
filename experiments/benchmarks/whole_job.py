"""The README's main job against the same job as a plain PyTorch script, timed as whole processes.

Runs `cnn-jax train --config digits` (in a fresh workdir each time) and
`digits_torch.py` one after the other, `--pairs` times, and prints each pair's wall seconds and
the ratio cnn_jax / PyTorch (min / median / max). The clock starts before the process starts and
stops when it ends: interpreter start-up, imports, data, compilation and training all count.

    python experiments/benchmarks/whole_job.py [--pairs 5] [--cache warm|cold]

`--cache warm` (the default) first runs cnn_jax once, untimed, to fill a compilation cache that
the timed runs then read, as a user's second run of a config does; `--cache cold` gives every
cnn_jax run an empty cache, as a first run on a fresh machine.
"""

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
TORCH_SCRIPT = os.path.join(HERE, 'digits_torch.py')


def _timed(command: list[str]) -> tuple[float, str]:
  start = time.perf_counter()
  result = subprocess.run(command, capture_output=True, text=True, check=False)
  seconds = time.perf_counter() - start
  if result.returncode:
    sys.exit(f'{" ".join(command)} failed:\n{result.stderr[-2000:]}')
  return seconds, result.stdout.strip().splitlines()[-1]


def _cnn_jax(scratch: str, cache: str) -> list[str]:
  return [os.path.join(os.path.dirname(sys.executable), 'cnn-jax'), 'train', '--config', 'digits',
          '--workdir', tempfile.mkdtemp(dir=scratch), f'--config.compilation_cache={cache}']


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--pairs', type=int, default=5)
  parser.add_argument('--cache', choices=('warm', 'cold'), default='warm')
  args = parser.parse_args()
  scratch = tempfile.mkdtemp(prefix='whole_job_')
  try:
    cache = os.path.join(scratch, 'cache')
    if args.cache == 'warm':
      _timed(_cnn_jax(scratch, cache))  # Fills the cache; not timed.
    ratios = []
    for pair in range(args.pairs):
      if args.cache == 'cold':
        cache = tempfile.mkdtemp(dir=scratch)
      ours, our_result = _timed(_cnn_jax(scratch, cache))
      theirs, their_result = _timed([sys.executable, TORCH_SCRIPT])
      ratios.append(ours / theirs)
      print(f'pair {pair + 1}: cnn_jax {ours:.2f} s, PyTorch {theirs:.2f} s, ratio '
            f'{ratios[-1]:.2f}\n  cnn_jax: {our_result[:110]}\n  PyTorch: {their_result}',
            flush=True)
    print(f'cnn_jax / PyTorch wall time ({args.cache} compilation cache), {args.pairs} pairs: '
          f'min {min(ratios):.2f}, median {statistics.median(ratios):.2f}, max {max(ratios):.2f}')
  finally:
    shutil.rmtree(scratch, ignore_errors=True)


if __name__ == '__main__':
  main()
