"""The introductory Keras article's network, exactly: one Conv2D → MaxPool → Dense(softmax).

    python -m cnn_jax.main --config keras_seed --workdir runs/keras_seed
    python -m cnn_jax.main --config keras_seed --workdir runs/keras_seed \\
        --config.model.features='(32,)' --config.model.kernel_size=3    # other filters / size

Conv2D(10 filters, 5×5, stride 1, 'valid', relu, Glorot-uniform init) on 300×300×3 cats and dogs →
MaxPooling2D(2×2) → Flatten → Dense(2) with softmax, trained with Adam on categorical
cross-entropy, batch 128, 5 epochs, 30% of the data held out (Keras `validation_split=0.3`).
Output sizes: (300 − 5 + 0)/1 + 1 = 296 → pool → 148; 148·148·10 = 219,040 features feed the dense
layer, so it has 438,082 weights + 2 biases; with the conv's 760 the total is 438,842 parameters.
Accuracy and time: not yet measured by this project (no download on the dev machine).
"""

import ml_collections

from cnn_jax.configs import default


def get_config(arg: str | None = None):
  """Returns the article's setup; `:small` uses 64 px and 1% of the data for a quick check."""
  config = default.get_config()
  config.data.name = 'cats_vs_dogs'
  config.data.train_split = 'train[:70%]'
  config.data.eval_split = 'train[70%:]'  # The article's validation_split=0.3; it has no test.
  config.data.test_split = ''
  config.data.image_size = 300
  config.model = ml_collections.ConfigDict({
      'name': 'single_conv',
      'features': (10,),  # Number of filters.
      'kernel_size': 5,  # Filter size F.
  })
  config.optimizer.name = 'adam'
  config.optimizer.learning_rate = 1e-3  # Keras' Adam default.
  config.batch_size = 128
  config.eval_batch_size = 128
  config.num_epochs = 5.0
  config.log_every_steps = 10
  return default.variant(config, arg, small={**default.SMALL_PHOTOS, 'log_every_steps': 1})
