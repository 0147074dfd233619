"""Speed measurements beside `cnn_jax.benchmark`: PyTorch reference, time to accuracy."""
