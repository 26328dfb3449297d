"""The masked-LM loss's cross entropy (roberta_jax/losses.py) against optax's, value and
gradient, with labels outside the vocabulary weighted out as the steps do."""

import jax
import jax.numpy as jnp
import numpy as np
import optax

from roberta_jax.losses import cross_entropy


def weighted(loss_fn, labels):
    weights = ((labels >= 0) & (labels < 37)).astype(jnp.float32)
    return lambda logits: jnp.sum(loss_fn(logits, labels) * weights) / jnp.sum(weights)


def optax_loss(logits, labels):
    return optax.softmax_cross_entropy_with_integer_labels(
        logits.astype(jnp.float32), jnp.clip(labels, 0, logits.shape[-1] - 1))


def test_value_and_gradient_equal_optax_s():
    rng = np.random.default_rng(0)
    # large logits too: the log-sum-exp must not overflow
    logits = jnp.asarray(rng.normal(size=(4, 9, 37)) * np.array([1, 10, 100, 1000])[:, None,
                                                                                    None],
                         jnp.float32)
    labels = jnp.asarray(rng.integers(-100, 37, (4, 9)).clip(-100), jnp.int32)
    labels = labels.at[:, 0].set(-100)     # ignored, as unmasked positions are
    ours, theirs = weighted(cross_entropy, labels), weighted(optax_loss, labels)
    np.testing.assert_allclose(ours(logits), theirs(logits), rtol=1e-6)
    np.testing.assert_allclose(jax.grad(ours)(logits), jax.grad(theirs)(logits), atol=1e-7)
    assert np.all(jax.grad(ours)(logits)[:, 0] == 0)


def test_bfloat16_logits_get_a_bfloat16_gradient_computed_in_float32():
    rng = np.random.default_rng(1)
    logits = jnp.asarray(rng.normal(size=(6, 37)), jnp.bfloat16)
    labels = jnp.asarray(rng.integers(0, 37, 6), jnp.int32)
    grad = jax.grad(weighted(cross_entropy, labels))(logits)
    assert grad.dtype == jnp.bfloat16
    expected = jax.grad(weighted(optax_loss, labels))(logits.astype(jnp.float32))
    np.testing.assert_allclose(grad.astype(np.float32), expected, atol=2e-3)
