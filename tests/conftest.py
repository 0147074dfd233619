"""Shared fixtures: the repo root, and configs loaded the way the command line loads them."""

import importlib.util
import os
import tempfile

# TFDS reads this at import: decoded caches of mock datasets go to a scratch dir, not the home dir.
os.environ.setdefault('TFDS_DATA_DIR', tempfile.mkdtemp(prefix='cnn_jax_tests_tfds_'))
# On a GPU machine, each test process and each subprocess it starts would otherwise take 75% of
# the GPU's memory at its first computation; they allocate what they use instead.
os.environ.setdefault('XLA_PYTHON_CLIENT_PREALLOCATE', 'false')

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG_NAMES = ('default', 'digits', 'mnist', 'fashion_mnist', 'cats_vs_dogs', 'keras_seed',
                'csv_digits')


def load_config(name: str, arg: str | None = None):
  """Returns the shipped config's get_config(arg), as `--config <name>[:arg]` would."""
  path = os.path.join(REPO, 'cnn_jax', 'configs', f'{name}.py')
  spec = importlib.util.spec_from_file_location(f'_config_{name}', path)
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  return mod.get_config(arg) if arg is not None else mod.get_config()
