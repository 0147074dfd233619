"""Augmentation: shapes kept, deterministic per key, each transform does what it says."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cnn_jax.training import steps
from cnn_jax.training.augment import (Augmentation, augment_batch, random_erase, rotate,
                                      evaluation_logits)
from cnn_jax.training.validation import config_problems
from conftest import load_config


def _images():
  return jnp.asarray(np.random.default_rng(0).normal(size=(6, 10, 12, 3)), jnp.float32)


def test_nothing_by_default_and_same_key_same_result():
  images = _images()
  np.testing.assert_array_equal(augment_batch(images, jax.random.key(0), Augmentation()), images)
  aug = Augmentation(crop_padding=2, horizontal_flip=True, rotation_degrees=10)
  a = augment_batch(images, jax.random.key(1), aug)
  b = augment_batch(images, jax.random.key(1), aug)
  c = augment_batch(images, jax.random.key(2), aug)
  assert a.shape == images.shape
  np.testing.assert_array_equal(a, b)
  assert not np.allclose(a, c)


def test_flip_mirrors_some_images_and_keeps_the_others():
  images = _images()
  out = np.asarray(augment_batch(images, jax.random.key(3), Augmentation(horizontal_flip=True)))
  mirrored = [np.array_equal(o, np.asarray(i)[:, ::-1]) for o, i in zip(out, images)]
  kept = [np.array_equal(o, np.asarray(i)) for o, i in zip(out, images)]
  assert all(m or k for m, k in zip(mirrored, kept)) and any(mirrored) and any(kept)


def test_crop_shifts_by_at_most_the_padding():
  image = jnp.zeros((1, 9, 9, 1)).at[0, 4, 4, 0].set(1.0)  # One bright pixel in the centre.
  for seed in range(8):
    out = np.asarray(augment_batch(image, jax.random.key(seed), Augmentation(crop_padding=2)))
    row, col = np.argwhere(out[0, ..., 0] == 1.0)[0]
    assert abs(row - 4) <= 2 and abs(col - 4) <= 2


def test_rotation_by_90_degrees_turns_a_row_into_a_column():
  image = jnp.zeros((5, 5, 1)).at[2, :, 0].set(1.0)  # A horizontal line through the centre.
  out = np.asarray(rotate(image, jnp.pi / 2))[..., 0]
  np.testing.assert_allclose(out[:, 2], 1.0, atol=1e-5)
  assert out.sum() == pytest.approx(5.0, abs=1e-4)


def test_flipping_digits_is_refused():
  config = load_config('digits')
  config.augment.horizontal_flip = True
  assert any('mirrored 2 is not a 2' in p for p in config_problems(config))
  assert not config_problems(load_config('cats_vs_dogs'))


def test_random_erasing_replaces_one_rectangle_of_the_asked_share_of_images():
  images = jnp.zeros((400, 28, 28, 1))
  erased = random_erase(images, jax.random.key(0), 0.5)
  changed = np.asarray(erased != 0)[..., 0]  # [B, H, W]: noise is never exactly 0.
  touched = changed.any(axis=(1, 2))
  assert 0.42 < touched.mean() < 0.58  # About half the images, as asked.
  areas = changed.sum(axis=(1, 2))[touched] / (28 * 28)
  assert areas.min() >= 0.015 and areas.max() <= 0.42  # 2-40% of the image, rounded to pixels.
  for mask in changed[touched][:20]:  # One filled rectangle: its bounding box, full.
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    assert mask[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1].all()
  # Off, or on beside the others: the other augmentations draw what they drew without it.
  with_erasing = Augmentation(crop_padding=2, horizontal_flip=True, erase_probability=1.0)
  without = Augmentation(crop_padding=2, horizontal_flip=True)
  x = jax.random.normal(jax.random.key(1), (8, 12, 12, 1))
  a = augment_batch(x, jax.random.key(2), with_erasing)
  b = augment_batch(x, jax.random.key(2), without)
  assert np.mean(np.asarray(a) == np.asarray(b)) > 0.5  # Only the rectangles differ.


def test_test_flip_averages_each_images_and_its_mirrors_distribution():
  images = _images()
  weights = jax.random.normal(jax.random.key(0), (10 * 12 * 3, 4))
  logits_of = lambda x: x.reshape(len(x), -1) @ weights  # Not mirror-symmetric.
  np.testing.assert_array_equal(evaluation_logits(logits_of, images, False), logits_of(images))
  averaged = jax.nn.softmax(evaluation_logits(logits_of, images, True))
  expected = (jax.nn.softmax(logits_of(images)) + jax.nn.softmax(logits_of(images[:, :, ::-1]))) / 2
  np.testing.assert_allclose(averaged, expected, rtol=1e-5, atol=1e-7)
  assert not np.allclose(averaged, jax.nn.softmax(logits_of(images)), atol=1e-3)  # It did mirror.
  symmetric = images + images[:, :, ::-1]  # Its own mirror: the same distribution as without.
  np.testing.assert_allclose(jax.nn.softmax(evaluation_logits(logits_of, symmetric, True)),
                             jax.nn.softmax(logits_of(symmetric)), rtol=1e-5, atol=1e-7)
  assert not Augmentation(test_flip=True).active  # Training batches are left alone.


def test_the_eval_step_scores_the_averaged_prediction():
  """An image the model gets right only mirrored: wrong without test_flip; with it, its label's
  probability is averaged with the mirror's and the pair decides."""
  import flax.linen as nn  # pylint: disable=g-import-not-at-top

  class LeftHalf(nn.Module):  # Class 0 if the left half is brighter, else 1; scaled by w.
    @nn.compact
    def __call__(self, x, train=False):
      w = self.param('w', nn.initializers.ones, ())
      left, right = x[:, :, :x.shape[2] // 2].mean((1, 2, 3)), x[:, :, x.shape[2] // 2:].mean((1, 2, 3))
      return w * jnp.stack([left - right, right - left], -1)

  image = jnp.zeros((1, 4, 4, 1)).at[:, :, :2].set(1.0)  # Left half bright: predicted 0.
  state = steps.TrainState(step=jnp.zeros((), jnp.int32), params={'w': jnp.ones(())},
                           batch_stats={}, opt_state=(), rng=jax.random.key(0))
  batch = {'image': image, 'label': jnp.array([1]), 'mask': jnp.ones(1)}
  plain = steps.eval_step_fn(LeftHalf())(state, batch)
  flipped = steps.eval_step_fn(LeftHalf(), test_flip=True)(state, batch)
  assert plain['correct'] == 0
  # Image and mirror disagree with equal confidence: probabilities (0.5, 0.5), loss log 2.
  np.testing.assert_allclose(flipped['loss_sum'], np.log(2), rtol=1e-6)
  assert flipped['loss_sum'] < plain['loss_sum']
