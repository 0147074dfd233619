"""Start-up: a second run of a config compiles nothing it compiled before (compiled programs
kept on disk), and the default job imports no optional heavy package it does not use."""

import os
import re
import subprocess
import sys
import textwrap

from conftest import REPO


def _run(workdir, cache_home, *extra):
  env = {k: v for k, v in os.environ.items() if k != 'JAX_COMPILATION_CACHE_DIR'}
  env['XDG_CACHE_HOME'] = str(cache_home)
  result = subprocess.run(
      [sys.executable, '-m', 'cnn_jax.main', '--config', 'configs/digits.py', '--workdir',
       str(workdir), '--config.num_steps=22', *extra], cwd=REPO, env=env, capture_output=True,
      text=True, timeout=300, check=False)
  assert result.returncode == 0, result.stderr
  final = result.stdout.strip().splitlines()[-1]
  hits, programs = map(int, re.search(r'(\d+) of (\d+) programs? from the disk cache', final)
                       .groups())
  return final.split(' of the checkpoint')[0], hits, programs


def test_the_second_run_loads_every_program_from_the_cache(tmp_path):
  first, hits, programs = _run(tmp_path / 'a', tmp_path / 'cache')
  assert hits == 0 and programs > 5
  assert len([n for n in os.listdir(tmp_path / 'cache' / 'cnn_jax' / 'jax')
              if n.endswith('-cache')]) == programs
  second, hits, again = _run(tmp_path / 'b', tmp_path / 'cache')
  assert (hits, again) == (programs, programs) and second == first  # The same numbers.
  _, hits, _ = _run(tmp_path / 'c', tmp_path / 'cache', '--config.compilation_cache=')
  assert hits == 0  # Turned off.


def test_a_cache_directory_that_cannot_be_made_is_said_and_the_run_goes_on(tmp_path):
  (tmp_path / 'a_file').write_text('')
  result = subprocess.run(
      [sys.executable, '-m', 'cnn_jax.main', '--config', 'configs/digits.py', '--workdir',
       str(tmp_path / 'w'), '--config.num_steps=2',
       f'--config.compilation_cache={tmp_path / "a_file" / "cache"}'],
      cwd=REPO, capture_output=True, text=True, timeout=300, check=False)
  assert result.returncode == 0, result.stderr
  assert 'Compiling without a cache: cannot create' in result.stdout


# Packages that cost a second or more to import, which the default digits job does not need.
NOT_FOR_THE_DEFAULT_JOB = ('sklearn', 'scipy', 'torch', 'optuna', 'matplotlib', 'tensorflow',
                           'tensorflow_datasets', 'grain')


def test_the_default_job_imports_no_heavy_package_it_does_not_use(tmp_path):
  # A stand-in PyTorch that fails when imported: tensorboardX imports PyTorch whenever it is
  # installed, and the metric writer must keep it from doing so.
  (tmp_path / 'site' / 'torch').mkdir(parents=True)
  (tmp_path / 'site' / 'torch' / '__init__.py').write_text('raise RuntimeError("torch imported")')
  script = textwrap.dedent(f"""
      import atexit, sys
      atexit.register(lambda: print('IMPORTED', sorted(
          {{name.split('.')[0] for name in sys.modules}} & set({NOT_FOR_THE_DEFAULT_JOB!r}))))
      sys.argv = ['cnn-jax', 'train', '--config', 'digits', '--workdir', {str(tmp_path / 'w')!r},
                  '--config.num_steps=3']
      from cnn_jax.__main__ import main
      main()
      """)
  env = {**os.environ, 'PYTHONPATH': str(tmp_path / 'site')}
  result = subprocess.run([sys.executable, '-c', script], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=300, check=False)
  assert result.returncode == 0, result.stderr
  assert 'Final test accuracy' in result.stdout
  assert result.stdout.strip().splitlines()[-1] == 'IMPORTED []'
