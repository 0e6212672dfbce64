"""Conv: N-dimensional convolution, and Conv1d / Conv2d / Conv3d."""

# ruff: noqa: F722 - jaxtyping shape strings are not forward references

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import jax
import jax.numpy as jnp

from .._module import Module, field
from ._misc import (
    Initializer,
    cast_for_op,
    check_size,
    fan_in_bound,
    init_param,
    ntuple,
    param_dtype_of,
    uniform_init,
)

if TYPE_CHECKING:
    from jaxtyping import Array, Float, PRNGKeyArray

__all__ = ["Conv", "Conv1d", "Conv2d", "Conv3d"]

Padding = str | int | Sequence[int] | Sequence[tuple[int, int]]
Pairs = tuple[tuple[int, int], ...]

PADDING_STRINGS = ("SAME", "SAME_LOWER", "VALID")
# The padding modes and the `jnp.pad` mode of each.
PAD_MODES = {"ZEROS": "constant", "REFLECT": "reflect", "REPLICATE": "edge", "CIRCULAR": "wrap"}


def parse_padding(padding: Padding, n: int, layer: str) -> str | Pairs:
    """`padding` as "SAME" / "SAME_LOWER", or as one `(before, after)` pair per dimension."""
    if isinstance(padding, str):
        if padding.upper() not in PADDING_STRINGS:
            raise ValueError(f"{layer}: `padding` must be one of {PADDING_STRINGS} or ints, got {padding!r}.")
        return ((0, 0),) * n if padding.upper() == "VALID" else padding.upper()
    if isinstance(padding, int) and not isinstance(padding, bool):
        return ((padding, padding),) * n
    items = tuple(padding)
    if len(items) == n:
        pairs = []
        for p in items:
            if isinstance(p, int) and not isinstance(p, bool):
                pairs.append((p, p))
            elif isinstance(p, Sequence) and len(p) == 2 and all(isinstance(q, int) for q in p):
                pairs.append((p[0], p[1]))
            else:
                break
        else:
            return tuple(pairs)
    raise ValueError(
        f"{layer}: `padding` must be 'SAME', 'SAME_LOWER', 'VALID', an int, or a sequence of "
        f"{n} ints or {n} (before, after) pairs; got {padding!r}."
    )


def same_padding(size: int, kernel: int, stride: int, dilation: int, lower: bool) -> tuple[int, int]:
    """The padding with which a convolution maps `size` to `ceil(size / stride)`; odd totals
    put the extra element after (SAME) or before (SAME_LOWER)."""
    out = -(-size // stride)
    total = max((out - 1) * stride + (kernel - 1) * dilation + 1 - size, 0)
    small, large = total // 2, total - total // 2
    return (large, small) if lower else (small, large)


def explicit_padding(padding: str | Pairs, sizes: Sequence[int], kernel: Sequence[int], stride: Sequence[int], dilation: Sequence[int]) -> Pairs:
    if not isinstance(padding, str):
        return padding
    lower = padding == "SAME_LOWER"
    return tuple(same_padding(*args, lower) for args in zip(sizes, kernel, stride, dilation))


def check_conv_input(layer: Any, x: Any) -> None:
    """Check that `x` is `(in_channels, *spatial)` for a Conv or ConvTranspose `layer`."""
    n = layer.num_spatial_dims
    shape = jnp.shape(x)
    if len(shape) != n + 1 or shape[0] != layer.in_channels:
        spatial = ", ".join(f"dim_{i + 1}" for i in range(n))
        hint = ""
        if len(shape) == n + 2 and shape[1] == layer.in_channels:
            hint = " For a batch, vmap over the leading axis: `jax.vmap(layer)(x)`."
        raise ValueError(
            f"{type(layer).__name__}(in_channels={layer.in_channels}, ...) expects `x` of shape "
            f"({layer.in_channels}, {spatial}): channels first, then {n} spatial "
            f"dimension{'s' if n > 1 else ''}, no batch axis. Got shape {shape}.{hint}"
        )


def check_conv_args(layer: str, in_channels: int, out_channels: int, groups: int, padding_mode: str, modes: Sequence[str]) -> None:
    check_size(layer, "in_channels", in_channels)
    check_size(layer, "out_channels", out_channels)
    check_size(layer, "groups", groups)
    if in_channels % groups or out_channels % groups:
        raise ValueError(
            f"{layer}: `in_channels` ({in_channels}) and `out_channels` ({out_channels}) must "
            f"both be divisible by `groups` ({groups})."
        )
    if padding_mode not in modes:
        raise ValueError(f"{layer}: `padding_mode` must be one of {tuple(modes)}, got {padding_mode!r}.")


def init_conv_params(
    layer: Any,
    dtype: Any,
    param_dtype: Any,
    weight_init: Initializer | None,
    bias_init: Initializer | None,
    key: Any,
) -> None:
    """Set the `weight`, `bias` and `dtype` of a Conv or ConvTranspose `layer` whose
    sizes are already set. Equinox's default init to the bit: both uniform in
    `[-1/sqrt(fan_in), 1/sqrt(fan_in))`, from the two halves of `key`."""
    name = type(layer).__name__
    stored = param_dtype_of(dtype, param_dtype)
    weight_key, bias_key = jax.random.split(key)
    in_per_group = layer.in_channels // layer.groups
    default = uniform_init(fan_in_bound(in_per_group * math.prod(layer.kernel_size)))
    weight_shape = (layer.out_channels, in_per_group, *layer.kernel_size)
    # The bias is stored broadcastable over the spatial dimensions, and its initialiser
    # is given that stored shape, so that what it returns is what is kept.
    bias_shape = (layer.out_channels,) + (1,) * layer.num_spatial_dims
    layer.weight = init_param(name, "weight_init", weight_init, default, weight_key, weight_shape, stored)
    layer.bias = (
        init_param(name, "bias_init", bias_init, default, bias_key, bias_shape, stored)
        if layer.use_bias
        else None
    )
    layer.dtype = dtype


class Conv(Module):
    """An N-dimensional convolution (strictly, a cross-correlation, as in every deep
    learning library), on one example of shape `(in_channels, dim_1, ..., dim_N)`.

    **Fields:**

    - `weight`: shape `(out_channels, in_channels // groups, *kernel_size)`.
    - `bias`: shape `(out_channels, 1, ..., 1)` (broadcasting over the spatial
      dimensions), or `None` if `use_bias=False`.
    - `num_spatial_dims`, `in_channels`, `out_channels`, `kernel_size`, `stride`,
      `padding`, `dilation`, `groups`, `use_bias`, `padding_mode`, `dtype`: as passed to
      `__init__` (static); `kernel_size`, `stride` and `dilation` as tuples, `padding` as
      a tuple of `(before, after)` pairs or the string `"SAME"` / `"SAME_LOWER"`.

    !!! example
        ```python
        >>> import jax, jax.numpy as jnp, larix
        >>> conv = larix.nn.Conv2d(3, 8, kernel_size=3, padding="SAME", key=jax.random.key(0))
        >>> conv.weight.shape
        (8, 3, 3, 3)
        >>> conv(jnp.ones((3, 32, 32))).shape
        (8, 32, 32)

        ```
    """

    num_spatial_dims: int = field(static=True)
    weight: Float[Array, "out_channels in_channels_per_group *kernel_size"]
    bias: Float[Array, "out_channels ..."] | None
    in_channels: int = field(static=True)
    out_channels: int = field(static=True)
    kernel_size: tuple[int, ...] = field(static=True)
    stride: tuple[int, ...] = field(static=True)
    padding: str | tuple[tuple[int, int], ...] = field(static=True)
    dilation: tuple[int, ...] = field(static=True)
    groups: int = field(static=True)
    use_bias: bool = field(static=True)
    padding_mode: str = field(static=True)
    dtype: Any = field(static=True)

    def __init__(
        self,
        num_spatial_dims: int,
        in_channels: int,
        out_channels: int,
        kernel_size: int | Sequence[int],
        stride: int | Sequence[int] = 1,
        padding: Padding = 0,
        dilation: int | Sequence[int] = 1,
        groups: int = 1,
        use_bias: bool = True,
        padding_mode: str = "ZEROS",
        dtype: Any = None,
        *,
        param_dtype: Any = None,
        weight_init: Initializer | None = None,
        bias_init: Initializer | None = None,
        key: PRNGKeyArray,
    ):
        """**Arguments:**

        - `num_spatial_dims`: the number of spatial dimensions (2 for images).
        - `in_channels`, `out_channels`: the numbers of input and output channels.
        - `kernel_size`, `stride`, `dilation`: an int (the same for every spatial
          dimension) or one int per spatial dimension.
        - `padding`: an int, one int per dimension, one `(before, after)` pair per
          dimension, `"VALID"` (no padding), or `"SAME"` / `"SAME_LOWER"` (output size
          `ceil(input size / stride)`; an odd total puts the extra element after / before).
        - `groups`: split the channels into this many independent groups; must divide both
          channel counts.
        - `use_bias`: whether to add a bias.
        - `padding_mode`: what the padding holds: `"ZEROS"`, `"REFLECT"`, `"REPLICATE"`
          or `"CIRCULAR"`.
        - `dtype`: the computation dtype: the input, weight and bias are cast to it before
          the convolution (if `None`, to their common type, so that a `float32` input into
          a layer with `bfloat16` parameters computes in `float32`). Also the dtype the
          parameters are stored in, unless `param_dtype` is given: as in Equinox, `dtype=`
          alone builds the whole layer in that dtype.
        - `param_dtype`: the dtype of the stored weight and bias (keyword-only). Defaults
          to `dtype`, or to `float32` (`float64` when JAX runs in 64-bit mode). Flax's
          mixed precision is `dtype=jnp.bfloat16, param_dtype=jnp.float32`.
        - `weight_init`, `bias_init`: initialisers with the signature of
          `jax.nn.initializers`, `init(key, shape, dtype) -> array` (keyword-only),
          called with `param_dtype` and the shapes the parameters are stored in:
          `(out_channels, in_channels // groups, *kernel_size)` for the weight and
          `(out_channels, 1, ..., 1)` (one 1 per spatial dimension) for the bias, which
          initialisers such as `jax.nn.initializers.zeros` or `normal` fill as they
          would a vector. The weight's channel axes come first (not last, as in Flax): a
          fan-based initialiser needs `in_axis=1, out_axis=0`, e.g.
          `jax.nn.initializers.lecun_normal(in_axis=1, out_axis=0)`. By default both
          draw uniformly from `[-1/sqrt(fan_in), 1/sqrt(fan_in))` with
          `fan_in = in_channels // groups * prod(kernel_size)`, as Equinox and PyTorch
          do, to the bit.
        - `key`: keyword-only; a `jax.random` key for the initialisation.

        **Raises:** `ValueError` for inconsistent sizes, unknown padding options, or an
        initialiser that returns an array of another shape or dtype.
        """
        name = type(self).__name__
        check_size(name, "num_spatial_dims", num_spatial_dims)
        check_conv_args(name, in_channels, out_channels, groups, padding_mode, tuple(PAD_MODES))
        n = num_spatial_dims
        self.num_spatial_dims = n
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.kernel_size = ntuple(kernel_size, n, name, "kernel_size")
        self.stride = ntuple(stride, n, name, "stride")
        self.padding = parse_padding(padding, n, name)
        self.dilation = ntuple(dilation, n, name, "dilation")
        self.groups = groups
        self.use_bias = use_bias
        self.padding_mode = padding_mode
        init_conv_params(self, dtype, param_dtype, weight_init, bias_init, key)

    def __call__(self, x: Float[Array, "in_channels ..."], *, key: PRNGKeyArray | None = None) -> Float[Array, "out_channels ..."]:
        """**Arguments:**

        - `x`: an array of shape `(in_channels, dim_1, ..., dim_N)`.
        - `key`: ignored.

        **Returns:** an array of shape `(out_channels, new_dim_1, ..., new_dim_N)`, of
        dtype `dtype` (or the common type of `x` and the parameters).

        **Raises:** `ValueError` if `x` has the wrong number of dimensions or channels.
        """
        check_conv_input(self, x)
        # lax.conv_general_dilated requires the input and the weight to share a dtype.
        x, weight, bias = cast_for_op(self.dtype, x, self.weight, self.bias)
        padding = explicit_padding(self.padding, x.shape[1:], self.kernel_size, self.stride, self.dilation)
        if self.padding_mode != "ZEROS":
            x = jnp.pad(x, ((0, 0), *padding), mode=PAD_MODES[self.padding_mode])
            padding = ((0, 0),) * self.num_spatial_dims
        y = jax.lax.conv_general_dilated(
            x[None],
            weight,
            window_strides=self.stride,
            padding=padding,
            rhs_dilation=self.dilation,
            feature_group_count=self.groups,
        )[0]
        if bias is not None:
            y = y + bias
        return y


class Conv1d(Conv):
    """[`larix.nn.Conv`][] with `num_spatial_dims=1`: input `(in_channels, length)`."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | Sequence[int],
        stride: int | Sequence[int] = 1,
        padding: Padding = 0,
        dilation: int | Sequence[int] = 1,
        groups: int = 1,
        use_bias: bool = True,
        padding_mode: str = "ZEROS",
        dtype: Any = None,
        *,
        param_dtype: Any = None,
        weight_init: Initializer | None = None,
        bias_init: Initializer | None = None,
        key: PRNGKeyArray,
    ):
        """**Arguments:** as [`larix.nn.Conv`][], without `num_spatial_dims`."""
        super().__init__(
            1,
            in_channels,
            out_channels,
            kernel_size,
            stride,
            padding,
            dilation,
            groups,
            use_bias,
            padding_mode,
            dtype,
            param_dtype=param_dtype,
            weight_init=weight_init,
            bias_init=bias_init,
            key=key,
        )


class Conv2d(Conv):
    """[`larix.nn.Conv`][] with `num_spatial_dims=2`: input `(in_channels, height, width)`."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | Sequence[int],
        stride: int | Sequence[int] = (1, 1),
        padding: Padding = (0, 0),
        dilation: int | Sequence[int] = (1, 1),
        groups: int = 1,
        use_bias: bool = True,
        padding_mode: str = "ZEROS",
        dtype: Any = None,
        *,
        param_dtype: Any = None,
        weight_init: Initializer | None = None,
        bias_init: Initializer | None = None,
        key: PRNGKeyArray,
    ):
        """**Arguments:** as [`larix.nn.Conv`][], without `num_spatial_dims`."""
        super().__init__(
            2,
            in_channels,
            out_channels,
            kernel_size,
            stride,
            padding,
            dilation,
            groups,
            use_bias,
            padding_mode,
            dtype,
            param_dtype=param_dtype,
            weight_init=weight_init,
            bias_init=bias_init,
            key=key,
        )


class Conv3d(Conv):
    """[`larix.nn.Conv`][] with `num_spatial_dims=3`: input `(in_channels, depth, height, width)`."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | Sequence[int],
        stride: int | Sequence[int] = (1, 1, 1),
        padding: Padding = (0, 0, 0),
        dilation: int | Sequence[int] = (1, 1, 1),
        groups: int = 1,
        use_bias: bool = True,
        padding_mode: str = "ZEROS",
        dtype: Any = None,
        *,
        param_dtype: Any = None,
        weight_init: Initializer | None = None,
        bias_init: Initializer | None = None,
        key: PRNGKeyArray,
    ):
        """**Arguments:** as [`larix.nn.Conv`][], without `num_spatial_dims`."""
        super().__init__(
            3,
            in_channels,
            out_channels,
            kernel_size,
            stride,
            padding,
            dilation,
            groups,
            use_bias,
            padding_mode,
            dtype,
            param_dtype=param_dtype,
            weight_init=weight_init,
            bias_init=bias_init,
            key=key,
        )
