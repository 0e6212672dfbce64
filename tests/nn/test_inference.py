"""Tests of larix.nn.inference_mode (src/larix/nn/_inference.py)."""

from __future__ import annotations

import jax.numpy as jnp
from nn_helpers import equinox, key

import larix


class Block(larix.Module):
    dropout: larix.nn.Dropout
    inner: list
    inference: bool = False  # a user layer with its own flag, containing others


def _flags(tree):
    found = []

    def visit(x):
        if isinstance(x, larix.Module):
            if "inference" in type(x).__dataclass_fields__:
                found.append(x.inference)
            for f in type(x)._larix_fields:
                visit(getattr(x, f.name))
        elif isinstance(x, (list, tuple)):
            for y in x:
                visit(y)
        elif isinstance(x, dict):
            for y in x.values():
                visit(y)

    visit(tree)
    return found


def test_sets_every_flag_including_nested_ones():
    model = {
        "a": Block(larix.nn.Dropout(0.1), [larix.nn.Dropout(0.2), larix.nn.Linear(2, 2, key=key())]),
        "attention": larix.nn.MultiheadAttention(2, 4, dropout_p=0.1, key=key()),
        "bn": larix.nn.BatchNorm(2, "batch", mode="ema"),
    }
    assert _flags(model) == [False] * 5
    inference = larix.nn.inference_mode(model)
    assert _flags(inference) == [True] * 5
    assert _flags(larix.nn.inference_mode(inference, value=False)) == [False] * 5
    assert _flags(model) == [False] * 5  # the original is unchanged


def test_effect_on_dropout():
    model = larix.nn.Sequential([larix.nn.Dropout(0.9)])
    x = jnp.ones(4)
    assert (larix.nn.inference_mode(model)(x) == x).all()


def test_static_inference_fields_are_left_alone():
    class Static(larix.Module):
        inference: bool = larix.field(static=True, default=False)

    assert larix.nn.inference_mode(Static()).inference is False


def test_matches_equinox_on_equinox_like_models():
    eqx = equinox()
    theirs = eqx.nn.inference_mode(eqx.nn.Sequential([eqx.nn.Dropout(0.5), eqx.nn.Dropout(0.3)]))
    ours = larix.nn.inference_mode(larix.nn.Sequential([larix.nn.Dropout(0.5), larix.nn.Dropout(0.3)]))
    assert [layer.inference for layer in ours] == [layer.inference for layer in theirs]
