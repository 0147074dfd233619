"""The installed distribution, as a user gets it: built as a wheel, installed into a fresh virtual
environment, and run from a directory that is not the repository."""

import importlib
import os
import shutil
import subprocess
import sys
import sysconfig

import pytest

from cnn_jax.__main__ import COMMANDS
from conftest import REPO


@pytest.fixture(scope='module')
def installed(tmp_path_factory):
  """A fresh venv holding only the wheel of cnn_jax; its dependencies come from this environment
  through a path entry (the editable install of the checkout is not on that path)."""
  root = tmp_path_factory.mktemp('install')
  source = root / 'source'  # A copy, so that building leaves nothing in the checkout.
  shutil.copytree(os.path.join(REPO, 'cnn_jax'), source / 'cnn_jax',
                  ignore=shutil.ignore_patterns('__pycache__'))
  for name in ('pyproject.toml', 'README.md'):
    shutil.copy(os.path.join(REPO, name), source)
  # Built as pip builds it for a user: in an isolated environment with pyproject.toml's setuptools.
  build = subprocess.run([sys.executable, '-m', 'pip', 'wheel', '--no-deps', '-q', '-w',
                          str(root / 'dist'), str(source)], capture_output=True, text=True,
                         timeout=300, check=False)
  assert build.returncode == 0, build.stderr
  wheel, = (root / 'dist').iterdir()
  venv = root / 'venv'
  subprocess.run([sys.executable, '-m', 'venv', str(venv)], check=True, timeout=300)
  python = str(venv / 'bin' / 'python')
  site = subprocess.run([python, '-c', 'import sysconfig; print(sysconfig.get_paths()["purelib"])'],
                        capture_output=True, text=True, check=True).stdout.strip()
  with open(os.path.join(site, 'dependencies.pth'), 'w', encoding='utf-8') as f:
    f.write(sysconfig.get_paths()['purelib'] + '\n')
  install = subprocess.run([python, '-m', 'pip', 'install', '--no-deps', '--no-index', '-q',
                            str(wheel)], capture_output=True, text=True, timeout=300, check=False)
  assert install.returncode == 0, install.stderr
  elsewhere = root / 'elsewhere'
  elsewhere.mkdir()
  return venv, elsewhere


def test_the_distribution_owns_no_global_configs_package(installed):
  venv, elsewhere = installed
  shown = subprocess.run([str(venv / 'bin' / 'python'), '-m', 'pip', 'show', '-f', 'cnn_jax'],
                         cwd=elsewhere, capture_output=True, text=True, timeout=120, check=True)
  files = [line.strip() for line in shown.stdout.split('Files:', 1)[1].splitlines()]
  assert 'cnn_jax/configs/digits.py' in files
  top_level = {f.split('/')[0] for f in files if f and not f.startswith('..')}
  assert {t for t in top_level if not t.startswith('cnn_jax')} == set(), top_level
  where = subprocess.run([str(venv / 'bin' / 'python'), '-c',
                          'import cnn_jax; print(cnn_jax.__file__)'], cwd=elsewhere,
                         capture_output=True, text=True, timeout=120, check=True).stdout
  assert where.startswith(str(venv)), where  # The wheel's copy, not the checkout.


@pytest.mark.parametrize('command', list(COMMANDS))
def test_each_console_command_answers_help(installed, command):
  venv, elsewhere = installed
  result = subprocess.run([str(venv / 'bin' / 'cnn-jax'), command, '--help'], cwd=elsewhere,
                          capture_output=True, text=True, timeout=120, check=False)
  assert result.returncode == 0, result.stderr
  description = importlib.import_module(COMMANDS[command]).__doc__.strip().splitlines()[0]
  assert result.stdout.startswith(description) and '--' in result.stdout


def test_a_shipped_config_is_found_by_name_from_any_directory(installed):
  venv, elsewhere = installed
  result = subprocess.run([str(venv / 'bin' / 'cnn-jax'), 'summary', '--config', 'digits'],
                          cwd=elsewhere, capture_output=True, text=True, timeout=300, check=False)
  assert result.returncode == 0, result.stderr
  assert 'Total params: 53,002' in result.stdout
  missing = subprocess.run([str(venv / 'bin' / 'cnn-jax'), 'summary', '--config', 'digitz'],
                           cwd=elsewhere, capture_output=True, text=True, timeout=120, check=False)
  assert missing.returncode == 2 and 'digits' in missing.stderr


def test_the_all_extra_installs_every_other_extra():
  tomllib = pytest.importorskip('tomllib')  # Python 3.11 on.
  with open(os.path.join(REPO, 'pyproject.toml'), 'rb') as f:
    extras = tomllib.load(f)['project']['optional-dependencies']
  named, = extras['all']
  assert named.startswith('cnn_jax[')
  assert set(named[len('cnn_jax['):-1].split(',')) == set(extras) - {'all'}
