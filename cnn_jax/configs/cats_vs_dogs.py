"""Cats vs dogs (TFDS 'cats_vs_dogs': 23,262 colour photos of varying size, 2 classes).

    python -m cnn_jax.main --config cats_vs_dogs --workdir runs/cats_vs_dogs

TFDS has only a 'train' split: its last 20% is the test split, and 10% of the rest (drawn with
data.split_seed) the validation split. Images are resized to 128×128. Preparing the dataset
needs TensorFlow once (README "Datasets").
Accuracy and time: not yet measured by this project (no download on the dev machine).
"""

from cnn_jax.configs import default


def get_config(arg: str | None = None):
  """Returns the cats-vs-dogs config; `:small` uses 64 px and 1% of the data for a quick check."""
  config = default.get_config()
  config.data.name = 'cats_vs_dogs'
  config.data.train_split = 'train[:80%]'  # 'validation' is 10% of it.
  config.data.test_split = 'train[80%:]'
  config.data.image_size = 128
  # Read batches as training goes; decoded 128 px images are cached beside the TFDS data and
  # memory-mapped, so later epochs (and runs) decode no JPEG again.
  config.data.stream = True
  config.model.features = (32, 64, 128, 128)  # 128 → 64 → 32 → 16 → 8 px
  config.model.batch_norm = True
  config.model.dense = (256,)
  config.model.dense_dropout = 0.5
  config.augment.crop_padding = 8  # 128 px photos: shifts of up to 1/16 of the side.
  config.augment.horizontal_flip = True  # A mirrored cat is still a cat.
  config.optimizer.name = 'adamw'
  config.optimizer.learning_rate = 1e-3
  config.optimizer.weight_decay = 1e-4
  config.optimizer.schedule = 'cosine'
  config.optimizer.warmup_steps = 300
  config.batch_size = 64
  config.num_epochs = 20.0
  config.log_every_steps = 50
  return default.variant(config, arg, small=default.SMALL_PHOTOS)
