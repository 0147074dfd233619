"""cnn_jax: train, compare and inspect convolutional image classifiers with JAX and Flax."""

__version__ = "0.1.0"
