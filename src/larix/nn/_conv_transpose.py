"""ConvTranspose: N-dimensional transposed convolution, and ConvTranspose1d / 2d / 3d."""

# ruff: noqa: F722 - jaxtyping shape strings are not forward references

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import jax
import jax.numpy as jnp

from .._module import Module, field
from ._conv import Padding, check_conv_args, check_conv_input, init_conv_params, parse_padding, same_padding
from ._misc import Initializer, cast_for_op, check_size, ntuple

if TYPE_CHECKING:
    from jaxtyping import Array, Float, PRNGKeyArray

__all__ = ["ConvTranspose", "ConvTranspose1d", "ConvTranspose2d", "ConvTranspose3d"]


def _fold_circular(y: Any, axis: int, lo: int, size: int) -> Any:
    # The adjoint of circular padding: output position j of the unpadded transposed
    # convolution belongs to input position (j - lo) mod size of the equivalent Conv.
    index = (jnp.arange(y.shape[axis]) - lo) % size
    moved = jnp.moveaxis(y, axis, 0)
    folded = jnp.zeros((size, *moved.shape[1:]), y.dtype).at[index].add(moved)
    return jnp.moveaxis(folded, 0, axis)


class ConvTranspose(Module):
    """An N-dimensional transposed convolution: it has the connectivity of a
    [`larix.nn.Conv`][] with the same `kernel_size`, `stride`, `padding`, `dilation` and
    `groups`, run from that Conv's output shape back to its input shape.

    The output size along each spatial dimension is
    `(size - 1) * stride - before - after + dilation * (kernel_size - 1) + 1 + output_padding`
    for explicit padding, and `size * stride - output_padding` for `"SAME"` /
    `"SAME_LOWER"`. `output_padding` picks among the input shapes a strided Conv maps to
    the same output shape.

    **Fields:**

    - `weight`: shape `(out_channels, in_channels // groups, *kernel_size)`.
    - `bias`: shape `(out_channels, 1, ..., 1)`, or `None` if `use_bias=False`.
    - the other arguments of `__init__` but the initialisers, `param_dtype` and `key`,
      as in [`larix.nn.Conv`][] (static), `dtype` included.

    To compute the exact linear transpose of a given `Conv` `conv`, set this layer's
    weight to `jnp.flip(conv.weight, axis=range(2, conv.weight.ndim)).swapaxes(0, 1)`.

    !!! example
        ```python
        >>> import jax, jax.numpy as jnp, larix
        >>> up = larix.nn.ConvTranspose2d(8, 3, kernel_size=4, stride=2, padding=1, key=jax.random.key(0))
        >>> up(jnp.ones((8, 16, 16))).shape
        (3, 32, 32)

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
    output_padding: tuple[int, ...] = field(static=True)
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
        output_padding: int | Sequence[int] = 0,
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

        - `num_spatial_dims`, `in_channels`, `out_channels`, `kernel_size`, `stride`,
          `dilation`, `groups`, `use_bias`, `key`: as [`larix.nn.Conv`][].
        - `dtype`, `param_dtype`, `weight_init`, `bias_init`: as [`larix.nn.Conv`][]:
          `dtype` is the computation dtype (`None`: the common type of the input and the
          parameters) and, unless `param_dtype` is given, the dtype of the parameters;
          the initialisers get shapes `(out_channels, in_channels // groups,
          *kernel_size)` and `(out_channels, 1, ..., 1)`. The default initialisation is
          Equinox's: uniform in `[-1/sqrt(fan_in), 1/sqrt(fan_in))` with
          `fan_in = in_channels // groups * prod(kernel_size)`.
        - `padding`: the padding of the equivalent `Conv` (same forms as there).
        - `output_padding`: an int or one int per dimension, each smaller than the stride
          or the dilation: added to the end of each spatial dimension of the output (with
          `"SAME"` padding: removed from it).
        - `padding_mode`: `"ZEROS"`, or `"CIRCULAR"` (then `padding` must be `"SAME"` or
          `"SAME_LOWER"` and `output_padding` zero) to transpose a circularly padded Conv.

        **Raises:** `ValueError` for inconsistent sizes, unsupported padding options, or
        an initialiser that returns an array of another shape or dtype.
        """
        name = type(self).__name__
        check_size(name, "num_spatial_dims", num_spatial_dims)
        check_conv_args(name, in_channels, out_channels, groups, padding_mode, ("ZEROS", "CIRCULAR"))
        n = num_spatial_dims
        self.num_spatial_dims = n
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.kernel_size = ntuple(kernel_size, n, name, "kernel_size")
        self.stride = ntuple(stride, n, name, "stride")
        self.padding = parse_padding(padding, n, name)
        self.output_padding = ntuple(output_padding, n, name, "output_padding", minimum=0)
        self.dilation = ntuple(dilation, n, name, "dilation")
        self.groups = groups
        self.use_bias = use_bias
        self.padding_mode = padding_mode
        for o, s, d in zip(self.output_padding, self.stride, self.dilation):
            if not 0 <= o < max(s, d):
                raise ValueError(
                    f"{name}: each `output_padding` must be >= 0 and smaller than the stride "
                    f"or the dilation; got output_padding={self.output_padding}, "
                    f"stride={self.stride}, dilation={self.dilation}."
                )
        if padding_mode == "CIRCULAR" and (not isinstance(self.padding, str) or any(self.output_padding)):
            raise ValueError(
                f"{name}: padding_mode='CIRCULAR' needs padding='SAME' or 'SAME_LOWER' and no "
                "output_padding."
            )
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
        circular = self.padding_mode == "CIRCULAR"
        pads, targets = [], []
        for size, k, s, d, o, i in zip(x.shape[1:], self.kernel_size, self.stride, self.dilation, self.output_padding, range(self.num_spatial_dims)):
            reach = d * (k - 1)
            if isinstance(self.padding, str):
                target = size * s - o  # the input size of the equivalent Conv
                lo, _ = same_padding(target, k, s, d, self.padding == "SAME_LOWER")
            else:
                lo, hi = self.padding[i]
                target = (size - 1) * s - lo - hi + reach + 1 + o
            targets.append((target, lo))
            if circular:
                pads.append((reach, reach))  # the full output, folded back below
            else:
                # The output of a stride-1 Conv over the dilated input, padded so that it
                # starts at the equivalent Conv's first input and has `target` entries.
                before = reach - lo
                pads.append((before, target - (size - 1) * s - 1 - before + reach))
        y = jax.lax.conv_general_dilated(
            x[None],
            weight,
            window_strides=(1,) * self.num_spatial_dims,
            padding=pads,
            lhs_dilation=self.stride,
            rhs_dilation=self.dilation,
            feature_group_count=self.groups,
        )[0]
        if circular:
            for axis, (target, lo) in enumerate(targets, start=1):
                y = _fold_circular(y, axis, lo, target)
        if bias is not None:
            y = y + bias
        return y


class ConvTranspose1d(ConvTranspose):
    """[`larix.nn.ConvTranspose`][] with `num_spatial_dims=1`."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | Sequence[int],
        stride: int | Sequence[int] = 1,
        output_padding: int | Sequence[int] = 0,
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
        """**Arguments:** as [`larix.nn.ConvTranspose`][], without `num_spatial_dims`.
        Note the order: `output_padding` comes before `padding` here, as in Equinox."""
        super().__init__(
            1,
            in_channels,
            out_channels,
            kernel_size,
            stride,
            padding,
            output_padding,
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


class ConvTranspose2d(ConvTranspose):
    """[`larix.nn.ConvTranspose`][] with `num_spatial_dims=2`."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | Sequence[int],
        stride: int | Sequence[int] = (1, 1),
        output_padding: int | Sequence[int] = (0, 0),
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
        """**Arguments:** as [`larix.nn.ConvTranspose`][], without `num_spatial_dims`.
        Note the order: `output_padding` comes before `padding` here, as in Equinox."""
        super().__init__(
            2,
            in_channels,
            out_channels,
            kernel_size,
            stride,
            padding,
            output_padding,
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


class ConvTranspose3d(ConvTranspose):
    """[`larix.nn.ConvTranspose`][] with `num_spatial_dims=3`."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | Sequence[int],
        stride: int | Sequence[int] = (1, 1, 1),
        output_padding: int | Sequence[int] = (0, 0, 0),
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
        """**Arguments:** as [`larix.nn.ConvTranspose`][], without `num_spatial_dims`.
        Note the order: `output_padding` comes before `padding` here, as in Equinox."""
        super().__init__(
            3,
            in_channels,
            out_channels,
            kernel_size,
            stride,
            padding,
            output_padding,
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
