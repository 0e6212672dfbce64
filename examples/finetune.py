"""Fine-tune the digits CNN of examples/train_digits.py for a new task: even or odd digits.

    python examples/train_digits.py       # first: writes examples/out/digits_cnn.safetensors
    python examples/finetune.py           # loads it, trains a new head, saves the result

Loads the checkpoint into a freshly built model of the same architecture, replaces the
10-class head with a new 2-class one, freezes everything else with `larix.Frozen`, trains
the head, and writes `digits_parity.safetensors` to `--out` (default: examples/out/).
Only the head differs from the checkpoint: the frozen convolutions keep their parameters
and, run in inference mode, BatchNorm keeps its running statistics.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

import larix
import larix.io

# The model, the data and the training step are train_digits.py's (next to this file,
# so on the import path when this file is run as a script).
from train_digits import (
    CHECKPOINT_NAME,
    DEFAULT_OUT,
    INSTALL_HINT,
    DigitsCNN,
    accuracy,
    load_digits_split,
    make_train_step,
    progress_bar,
)


def freeze_features(model: DigitsCNN) -> DigitsCNN:
    """`model` with its features frozen and in inference mode: only `dropout` and `head` train.

    `larix.Frozen` hides the parameters from the filters, so the unchanged training step
    computes no gradient for them and the optimiser keeps no state for them. Inference
    mode makes BatchNorm normalise by its running statistics and leave them unchanged, as
    a frozen layer should (in training mode it would renormalise by each batch).

    (The alternative, a filter spec such as `larix.by_path("head.**")` given to
    `larix.partition`, leaves the model as it is but needs a training step of its own;
    see docs/building-models.md.)
    """
    return larix.tree_at(lambda m: m.features, model, replace_fn=lambda f: larix.Frozen(larix.nn.inference_mode(f)))


def unfreeze_features(model: DigitsCNN) -> DigitsCNN:
    """The inverse of `freeze_features`: the layout of a train_digits.py checkpoint."""
    return larix.tree_at(lambda m: m.features, model, replace_fn=lambda f: larix.nn.inference_mode(f.value, False))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--checkpoint", type=Path, default=DEFAULT_OUT / CHECKPOINT_NAME,
        help=f"written by examples/train_digits.py (default: {DEFAULT_OUT / CHECKPOINT_NAME})",
    )  # fmt: skip
    parser.add_argument("--steps", type=int, default=200, help="training steps (default: 200)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--learning-rate", type=float, default=1e-2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="where to write the fine-tuned model")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.add_argument("--smoke", action="store_true", help="a few steps only, to check that it runs (for CI)")
    args = parser.parse_args()
    try:
        import optax
    except ImportError:
        sys.exit(f"This example uses optax for the optimiser: {INSTALL_HINT}")
    if not args.checkpoint.exists():
        sys.exit(f"No checkpoint at {args.checkpoint}: run examples/train_digits.py first (or pass --checkpoint).")
    steps = 10 if args.smoke else args.steps

    # A freshly built model of the same architecture is the template: `load` checks that
    # the file has exactly its arrays, with the same shapes and dtypes, and fills them in.
    head_key, data_key = jax.random.split(jax.random.key(args.seed))
    like = larix.nn.make_with_state(DigitsCNN)(key=jax.random.key(0))
    model, state = larix.io.load(args.checkpoint, like)

    train_x, train_y, test_x, test_y = load_digits_split()  # the split the checkpoint trained on
    test_x = jnp.asarray(test_x)
    print(f"loaded {args.checkpoint}: 10-class test accuracy {float(accuracy(model, state, test_x, test_y)):.3f}")

    # The new task: is the digit even (0) or odd (1)? A new head, then freeze the rest.
    model = larix.tree_at(lambda m: m.head, model, larix.nn.Linear(model.head.in_features, 2, key=head_key))
    model = freeze_features(model)
    train_y, test_y = train_y % 2, jnp.asarray(test_y % 2)
    print(larix.summary(model, depth=1))

    optimiser = optax.adam(args.learning_rate)
    opt_state = optimiser.init(larix.filter(model, larix.is_inexact_array))  # the head only
    train_step = make_train_step(optimiser)
    initial = float(accuracy(model, state, test_x, test_y))
    rng = np.random.default_rng(args.seed)
    for step in progress_bar(steps, args.quiet):
        batch = rng.choice(len(train_y), args.batch_size, replace=False)
        step_key = jax.random.fold_in(data_key, step)
        model, state, opt_state, _ = train_step(model, state, opt_state, train_x[batch], train_y[batch], step_key)
    final = float(accuracy(model, state, test_x, test_y))
    print(f"test accuracy: {initial:.3f} before training, {final:.3f} after")

    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / "digits_parity.safetensors"
    larix.io.save(path, (unfreeze_features(model), state))
    print(f"saved {path}")


if __name__ == "__main__":
    main()
