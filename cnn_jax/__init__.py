"""cnn_jax: train, compare and inspect convolutional image classifiers with JAX and Flax.

From Python: `cnn_jax.train(config, workdir)` and `cnn_jax.load(workdir)` (see cnn_jax/api.py).
Importing the package stays light (the commands' --help needs no JAX): the API and its machinery
load on first use.
"""

__version__ = "0.1.0"
__all__ = ['Classifier', 'load', 'train']


def __getattr__(name: str):
  if name in __all__:
    from cnn_jax import api  # pylint: disable=g-import-not-at-top
    return getattr(api, name)
  raise AttributeError(f'module {__name__!r} has no attribute {name!r}')
