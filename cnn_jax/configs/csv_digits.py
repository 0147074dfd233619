"""A CSV-labelled practice problem: digits as PNG files plus train.csv (id,label).

    python experiments/csv_digits/make_dataset.py --out data/csv_digits
    python -m cnn_jax.main --config csv_digits --workdir runs/csv_digits
    python -m cnn_jax.predict --workdir runs/csv_digits --csv runs/csv_digits/test_predictions.csv \\
        data/csv_digits/test
    python -m cnn_jax.score --predictions runs/csv_digits/test_predictions.csv \\
        --labels data/csv_digits/test_labels.csv

15% of the labelled files are held out for validation; the test folder has no labels until the
last command scores the predictions. Result measured on a 2-core CPU: see experiments/README.md.
"""

from cnn_jax.configs import digits


def get_config(arg: str | None = None):
  """Returns the digits setup reading PNGs listed in a CSV; `:small` trains a few epochs only."""
  config = digits.get_config(arg)
  config.data.name = 'csv'
  config.data.path = 'data/csv_digits/train'
  config.data.csv = 'data/csv_digits/train.csv'
  config.data.image_size = 8
  config.data.channels = 1  # Grey PNGs.
  config.data.train_split = 'train'
  config.data.eval_split = 'validation'
  config.data.test_split = ''  # The test folder's labels are held back: cnn_jax.score reports it.
  config.data.validation_fraction = 0.15
  return config
