"""Equinox's `equinox.internal` for larix: the names that diffrax, lineax and optimistix use.

These are building blocks for numerical libraries rather than for models: loops that can
be reverse-mode differentiated, guards against a transform, JAX primitives on pytrees,
enumerations of error conditions. `import larix.internal as eqxi` lets such code run on
larix. Unlike the rest of larix, this API follows Equinox's, which may change.
"""

from .._errors import branched_error_if as branched_error_if
from .._errors import error_if as error_if
from .._module import AbstractClassVar as AbstractClassVar
from .._module import AbstractVar as AbstractVar
from ._enum import Enumeration as Enumeration
from ._finalise import finalise_eval_jaxpr as finalise_eval_jaxpr
from ._finalise import finalise_fn as finalise_fn
from ._finalise import finalise_jaxpr as finalise_jaxpr
from ._finalise import finalise_jaxpr_as_fn as finalise_jaxpr_as_fn
from ._finalise import finalise_make_jaxpr as finalise_make_jaxpr
from ._finalise import primitive_finalisations as primitive_finalisations
from ._finalise import register_impl_finalisation as register_impl_finalisation
from ._guards import nonbatchable as nonbatchable
from ._guards import nondifferentiable as nondifferentiable
from ._guards import nondifferentiable_backward as nondifferentiable_backward
from ._guards import nontraceable as nontraceable
from ._guards import unvmap_all as unvmap_all
from ._guards import unvmap_all_p as unvmap_all_p
from ._guards import unvmap_any as unvmap_any
from ._guards import unvmap_any_p as unvmap_any_p
from ._guards import unvmap_max as unvmap_max
from ._guards import unvmap_max_p as unvmap_max_p
from ._guards import unvmap_min as unvmap_min
from ._loop import MaybeBuffer as MaybeBuffer
from ._loop import buffer_at_set as buffer_at_set
from ._loop import scan as scan
from ._loop import while_loop as while_loop
from ._misc import GetKey as GetKey
from ._misc import Static as Static
from ._misc import cached_filter_eval_shape as cached_filter_eval_shape
from ._misc import closure_to_pytree as closure_to_pytree
from ._misc import doc_remove_args as doc_remove_args
from ._misc import doc_repr as doc_repr
from ._misc import eval_empty as eval_empty
from ._misc import eval_full as eval_full
from ._misc import eval_zero as eval_zero
from ._misc import hashable_combine as hashable_combine
from ._misc import hashable_partition as hashable_partition
from ._misc import left_broadcast_to as left_broadcast_to
from ._misc import nextafter as nextafter
from ._misc import prevbefore as prevbefore
from ._misc import scan_trick as scan_trick
from ._misc import str2jax as str2jax
from ._noinline import noinline as noinline
from ._omega import ω as ω
from ._primitive import filter_primitive_batching as filter_primitive_batching
from ._primitive import filter_primitive_bind as filter_primitive_bind
from ._primitive import filter_primitive_def as filter_primitive_def
from ._primitive import filter_primitive_jvp as filter_primitive_jvp
from ._primitive import filter_primitive_transpose as filter_primitive_transpose
from ._primitive import materialise_zeros as materialise_zeros
from ._vprim import create_vprim as create_vprim
