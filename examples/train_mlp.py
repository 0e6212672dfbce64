"""Train an MLP classifier with larix and optax on scikit-learn's handwritten digits.

    pip install -e '.[examples]'          # from a clone of larix
    python examples/train_mlp.py                      # 8x8 digits, 10 classes; ~10 s on a CPU
    python examples/train_mlp.py --synthetic          # a tiny generated data set instead
"""

from __future__ import annotations

import argparse
import sys

import jax
import jax.numpy as jnp
import numpy as np

import larix

INSTALL_HINT = "pip install -e '.[examples]' (from a clone of larix)"


def load_data(synthetic: bool, seed: int) -> tuple[np.ndarray, np.ndarray, int]:
    """Features (scaled to about [0, 1]), integer labels, and the number of classes."""
    if synthetic:  # four Gaussian blobs in 8 dimensions: no download, no extra package
        rng = np.random.default_rng(seed)
        labels = rng.integers(0, 4, 600)
        return rng.normal(size=(4, 8))[labels] + 0.7 * rng.normal(size=(600, 8)), labels, 4
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        sys.exit(f"The digits data set ships with scikit-learn: {INSTALL_HINT}, or run with --synthetic.")
    features, labels = load_digits(return_X_y=True)
    return features / 16.0, labels, 10


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=500, help="training steps (default: 500)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--learning-rate", type=float, default=3e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--synthetic", action="store_true", help="use a small generated data set")
    args = parser.parse_args()
    try:
        import optax
    except ImportError:
        sys.exit(f"This example uses optax for the optimiser: {INSTALL_HINT}")

    features, labels, num_classes = load_data(args.synthetic, args.seed)
    order = np.random.default_rng(args.seed).permutation(len(labels))
    features, labels = jnp.asarray(features[order], jnp.float32), jnp.asarray(labels[order])
    num_test = len(labels) // 5
    test_x, test_y, train_x, train_y = features[:num_test], labels[:num_test], features[num_test:], labels[num_test:]

    model_key, data_key = jax.random.split(jax.random.key(args.seed))
    model = larix.nn.MLP(features.shape[1], num_classes, width_size=64, depth=2, key=model_key)
    optimiser = optax.adam(args.learning_rate)
    opt_state = optimiser.init(larix.filter(model, larix.is_inexact_array))

    def loss_fn(model: larix.nn.MLP, x: jax.Array, y: jax.Array) -> jax.Array:
        logits = jax.vmap(model)(x)  # layers act on one example: vmap over the batch
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

    @larix.filter_jit
    def train_step(model, opt_state, x, y):
        loss, grads = larix.filter_value_and_grad(loss_fn)(model, x, y)
        updates, opt_state = optimiser.update(grads, opt_state, larix.filter(model, larix.is_inexact_array))
        return larix.apply_updates(model, updates), opt_state, loss

    @larix.filter_jit
    def accuracy(model, x, y):
        return jnp.mean(jnp.argmax(jax.vmap(model)(x), axis=-1) == y)

    initial = float(accuracy(model, test_x, test_y))
    print(f"{len(train_y)} training and {num_test} test examples, {num_classes} classes")
    for step in range(args.steps):
        batch = jax.random.choice(jax.random.fold_in(data_key, step), len(train_y), (args.batch_size,))
        model, opt_state, loss = train_step(model, opt_state, train_x[batch], train_y[batch])
        if step % 100 == 0 or step == args.steps - 1:
            print(f"step {step:4d}  loss {float(loss):.3f}  test accuracy {float(accuracy(model, test_x, test_y)):.3f}")
    final = float(accuracy(model, test_x, test_y))
    print(f"test accuracy: {initial:.3f} before training, {final:.3f} after")


if __name__ == "__main__":
    main()
