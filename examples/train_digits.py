"""Train a small CNN, with batch normalisation and dropout, on scikit-learn's handwritten digits.

    pip install -e '.[examples]'          # from a clone of larix
    python examples/train_digits.py       # ~98% test accuracy in well under a minute on a CPU
    python examples/train_digits.py --smoke --out /tmp/digits   # a few steps, as CI runs it

Prints a summary of the model, trains it with optax's Adam, then prints the test accuracy
before and after training, and writes to `--out` (default: examples/out/):

- `digits_cnn.safetensors`: the checkpoint, `(model, state)`, for `larix.io.load` (see
  examples/finetune.py, which fine-tunes it);
- `digits_cnn.png`: the training loss and test accuracy curves.

What it shows: a stateful layer (BatchNorm, whose running statistics live in a
`larix.nn.State` built by `larix.nn.make_with_state`), a batch axis named for BatchNorm's
statistics, one dropout key per example, and `larix.nn.inference_mode` for evaluation.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

import larix
import larix.io

INSTALL_HINT = "pip install -e '.[examples]' (from a clone of larix)"
DEFAULT_OUT = Path(__file__).resolve().parent / "out"
CHECKPOINT_NAME = "digits_cnn.safetensors"


class DigitsCNN(larix.Module):
    """Two convolution blocks (the `features`), then dropout and a linear `head`.

    Acts on one image of shape `(1, 8, 8)` and a `larix.nn.State`; returns the logits and
    the new state. Keeping the head apart from the features lets examples/finetune.py
    freeze the features with one `larix.tree_at`.
    """

    features: larix.nn.Sequential
    dropout: larix.nn.Dropout
    head: larix.nn.Linear

    def __init__(self, num_classes: int = 10, *, key: jax.Array):
        conv1_key, conv2_key, head_key = jax.random.split(key, 3)
        relu = larix.nn.Lambda(jax.nn.relu)
        self.features = larix.nn.Sequential([
            # No bias before BatchNorm: it would be subtracted out with the mean.
            larix.nn.Conv2d(1, 16, kernel_size=3, padding=1, use_bias=False, key=conv1_key),
            # mode="batch": normalise by the batch's statistics in training (as PyTorch
            # and Flax do); the running statistics are used in inference mode.
            larix.nn.BatchNorm(16, axis_name="batch", mode="batch"),
            relu,
            larix.nn.MaxPool2d(kernel_size=2, stride=2),  # (16, 8, 8) -> (16, 4, 4)
            larix.nn.Conv2d(16, 32, kernel_size=3, padding=1, use_bias=False, key=conv2_key),
            larix.nn.BatchNorm(32, axis_name="batch", mode="batch"),
            relu,
            larix.nn.MaxPool2d(kernel_size=2, stride=2),  # (32, 4, 4) -> (32, 2, 2)
            larix.nn.Lambda(jnp.ravel),
        ])  # fmt: skip
        self.dropout = larix.nn.Dropout(0.3)
        self.head = larix.nn.Linear(32 * 2 * 2, num_classes, key=head_key)

    def __call__(
        self, image: jax.Array, state: larix.nn.State, *, key: jax.Array | None = None
    ) -> tuple[jax.Array, larix.nn.State]:
        x, state = self.features(image, state)
        x = self.dropout(x, key=key)
        return self.head(x), state


def load_digits_split(test_fraction: float = 0.2) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """`(train_images, train_labels, test_images, test_labels)`: images `(n, 1, 8, 8)` in [0, 1].

    The split is fixed (it does not follow `--seed`), so that examples/finetune.py
    evaluates on images that the checkpoint never trained on.
    """
    try:
        from sklearn.datasets import load_digits
        from sklearn.model_selection import train_test_split
    except ImportError:
        sys.exit(f"The digits data set ships with scikit-learn: {INSTALL_HINT}")
    images, labels = load_digits(return_X_y=True)
    images = (images / 16.0).astype(np.float32).reshape(-1, 1, 8, 8)
    train_x, test_x, train_y, test_y = train_test_split(
        images, labels, test_size=test_fraction, stratify=labels, random_state=0
    )
    return train_x, train_y, test_x, test_y


# Under this vmap every image is one example: the model and the state are shared
# (`in_axes=None`, and the state comes back once: `out_axes=None`), the images and the
# dropout keys are mapped. BatchNorm averages its statistics over the axis named "batch".
_batched = larix.filter_vmap(
    lambda model, image, state, key: model(image, state, key=key),
    in_axes=(None, 0, None, 0),
    out_axes=(0, None),
    axis_name="batch",
)


def make_train_step(optimiser):
    """A jitted `step(model, state, opt_state, images, labels, key) -> (model, state, opt_state, loss)`.

    Trains every floating-point array of the model: a `larix.Frozen` part (as in
    examples/finetune.py) is left out with no change here.
    """
    import optax

    def loss_fn(model, state, images, labels, key):
        keys = jax.random.split(key, images.shape[0])  # one dropout key per example
        logits, state = _batched(model, images, state, keys)
        loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
        return loss, state  # the new state is returned beside the loss: `has_aux=True`

    @larix.filter_jit
    def step(model, state, opt_state, images, labels, key):
        (loss, state), grads = larix.filter_value_and_grad(loss_fn, has_aux=True)(
            model, state, images, labels, key
        )
        params = larix.filter(model, larix.is_inexact_array)
        updates, opt_state = optimiser.update(grads, opt_state, params)
        return larix.apply_updates(model, updates), state, opt_state, loss

    return step


@larix.filter_jit
def accuracy(model, state, images, labels) -> jax.Array:
    """The fraction of `images` classified as `labels`, in inference mode (running
    statistics, no dropout; the state is left unchanged)."""
    logits, _ = _batched(larix.nn.inference_mode(model), images, state, None)  # no dropout: no keys
    return jnp.mean(jnp.argmax(logits, axis=-1) == labels)


def progress_bar(total: int, quiet: bool):
    """A tqdm bar on a terminal; none (a plain iterator) with `--quiet` or in a log."""
    try:
        from tqdm import tqdm
    except ImportError:
        sys.exit(f"This example shows its progress with tqdm: {INSTALL_HINT}")
    return tqdm(range(total), disable=quiet or not sys.stderr.isatty(), unit="step")


def batches(num_examples: int, batch_size: int, rng: np.random.Generator):
    """Index arrays of `batch_size`, each epoch a fresh permutation; forever."""
    while True:
        order = rng.permutation(num_examples)
        for start in range(0, num_examples - batch_size + 1, batch_size):
            yield order[start : start + batch_size]


def save_curves(path: Path, losses: list[float], evaluations: list[tuple[int, float]]) -> None:
    """A PNG of the training loss per step and the test accuracy at each evaluation."""
    try:
        import matplotlib
    except ImportError:
        sys.exit(f"This example plots with matplotlib: {INSTALL_HINT}")
    matplotlib.use("Agg")  # no display needed: write the file only
    import matplotlib.pyplot as plt

    figure, (left, right) = plt.subplots(1, 2, figsize=(9, 3.5), layout="constrained")
    left.plot(losses, linewidth=0.8)
    left.set(xlabel="step", ylabel="training loss", yscale="log", title="Loss")
    steps, accuracies = zip(*evaluations)
    right.plot(steps, accuracies, marker="o", markersize=3)
    right.set(xlabel="step", ylabel="test accuracy", ylim=(0, 1), title="Test accuracy")
    right.grid(alpha=0.3)
    figure.savefig(path, dpi=120)
    plt.close(figure)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=600, help="training steps (default: 600)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--learning-rate", type=float, default=3e-3)
    parser.add_argument("--seed", type=int, default=0, help="for the initial parameters, batches and dropout")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="where to write the checkpoint and the plot")
    parser.add_argument("--quiet", action="store_true", help="no progress bar or progress lines")
    parser.add_argument("--smoke", action="store_true", help="a few steps only, to check that it runs (for CI)")
    args = parser.parse_args()
    try:
        import optax
    except ImportError:
        sys.exit(f"This example uses optax for the optimiser: {INSTALL_HINT}")
    steps = 10 if args.smoke else args.steps
    eval_every = max(1, steps // 12)

    train_x, train_y, test_x, test_y = load_digits_split()
    model_key, data_key = jax.random.split(jax.random.key(args.seed))
    model, state = larix.nn.make_with_state(DigitsCNN)(key=model_key)
    print(f"{len(train_y)} training and {len(test_y)} test images of 8x8 pixels, 10 classes")
    # BatchNorm's batch statistics need the named batch axis: summarise one image in
    # inference mode (running statistics). The shapes are computed abstractly, no FLOPs.
    print(larix.summary(larix.nn.inference_mode(model), jnp.zeros((1, 8, 8)), state))

    optimiser = optax.adam(args.learning_rate)
    opt_state = optimiser.init(larix.filter(model, larix.is_inexact_array))
    train_step = make_train_step(optimiser)
    test_x, test_y = jnp.asarray(test_x), jnp.asarray(test_y)

    initial = float(accuracy(model, state, test_x, test_y))
    losses: list[float] = []
    evaluations = [(0, initial)]
    batch_indices = batches(len(train_y), args.batch_size, np.random.default_rng(args.seed))
    start = time.perf_counter()
    bar = progress_bar(steps, args.quiet)
    for step in bar:
        batch = next(batch_indices)
        step_key = jax.random.fold_in(data_key, step)
        model, state, opt_state, loss = train_step(model, state, opt_state, train_x[batch], train_y[batch], step_key)
        losses.append(float(loss))
        if (step + 1) % eval_every == 0 or step + 1 == steps:
            evaluations.append((step + 1, float(accuracy(model, state, test_x, test_y))))
            if not bar.disable:
                bar.set_postfix(loss=f"{losses[-1]:.3f}", test_accuracy=f"{evaluations[-1][1]:.3f}")
            elif not args.quiet:
                print(f"step {step + 1:4d}  loss {losses[-1]:.3f}  test accuracy {evaluations[-1][1]:.3f}")
    bar.close()
    final = evaluations[-1][1]
    print(f"test accuracy: {initial:.3f} before training, {final:.3f} after")
    print(f"trained {steps} steps in {time.perf_counter() - start:.1f} s (compilation included)")

    args.out.mkdir(parents=True, exist_ok=True)
    checkpoint = args.out / CHECKPOINT_NAME
    # The model in training mode and its state (BatchNorm's running statistics): load with
    # `larix.io.load(checkpoint, larix.nn.make_with_state(DigitsCNN)(key=...))`.
    larix.io.save(checkpoint, (model, state))
    plot = args.out / "digits_cnn.png"
    save_curves(plot, losses, evaluations)
    print(f"saved {checkpoint} and {plot}")


if __name__ == "__main__":
    main()
