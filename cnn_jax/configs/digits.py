"""The offline default: a two-block ConvNet on the 8×8 handwritten digits bundled with scikit-learn.

    python -m cnn_jax.main --config digits --workdir runs/digits

Needs no network. 1,293 training, 144 validation and 360 test digits; 900 steps of 64.
Measured on a 2-core CPU: see README.md ("What to expect") for accuracy and time.
"""

from cnn_jax.configs import default


def get_config(arg: str | None = None):
  """Returns the digits config; `configs/digits.py:small` trains for a few steps only."""
  config = default.get_config()
  config.data.name = 'digits'
  config.model.features = (32, 64)  # 8×8 → pool → 4×4 → pool → 2×2×64
  config.model.dense = (128,)
  config.model.dense_dropout = 0.3  # 1.4k training images: regularise the 37k-parameter head.
  config.optimizer.name = 'adam'
  config.optimizer.learning_rate = 2e-3
  config.optimizer.schedule = 'cosine'
  config.optimizer.warmup_steps = 50
  config.batch_size = 64
  config.num_epochs = 45.0
  config.log_every_steps = 20
  config.eval_every_steps = 220  # About every 10 epochs.
  return default.variant(config, arg, small={'num_epochs': 2.0})
