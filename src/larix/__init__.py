"""larix: pytree-native neural networks for JAX."""

from . import debug as debug
from . import nn as nn

from ._ad import filter_grad as filter_grad
from ._ad import filter_hessian as filter_hessian
from ._ad import filter_jacfwd as filter_jacfwd
from ._ad import filter_jacrev as filter_jacrev
from ._ad import filter_value_and_grad as filter_value_and_grad
from ._callback import filter_closure_convert as filter_closure_convert
from ._callback import filter_pure_callback as filter_pure_callback
from ._checkpoint import filter_checkpoint as filter_checkpoint
from ._custom_ad import filter_custom_jvp as filter_custom_jvp
from ._custom_ad import filter_custom_vjp as filter_custom_vjp
from ._filters import Filter as Filter
from ._filters import by_path as by_path
from ._filters import by_type as by_type
from ._filters import is_array as is_array
from ._filters import is_array_like as is_array_like
from ._filters import is_inexact_array as is_inexact_array
from ._filters import is_inexact_array_like as is_inexact_array_like
from ._flat import Skeleton as Skeleton
from ._flat import merge as merge
from ._flat import split as split
from ._frozen import Frozen as Frozen
from ._jit import filter_jit as filter_jit
from ._jvp_vjp import filter_jvp as filter_jvp
from ._jvp_vjp import filter_vjp as filter_vjp
from ._module import AbstractClassVar as AbstractClassVar
from ._module import AbstractVar as AbstractVar
from ._module import BoundMethod as BoundMethod
from ._module import Module as Module
from ._module import field as field
from ._module import module_update_wrapper as module_update_wrapper
from ._module import static_field as static_field
from ._partial import Partial as Partial
from ._partition import combine as combine
from ._partition import filter as filter  # noqa: A004 - Equinox's name
from ._partition import partition as partition
from ._pformat import tree_pformat as tree_pformat
from ._pformat import tree_pprint as tree_pprint
from ._pmap import filter_pmap as filter_pmap
from ._scan import Stacked as Stacked
from ._scan import stack as stack
from ._shapes import filter_eval_shape as filter_eval_shape
from ._shapes import filter_make_jaxpr as filter_make_jaxpr
from ._shard import filter_shard as filter_shard
from ._shard import named_shardings as named_shardings
from ._tree import apply_updates as apply_updates
from ._tree import if_array as if_array
from ._tree import tree_at as tree_at
from ._tree import tree_check as tree_check
from ._tree import tree_equal as tree_equal
from ._tree import tree_flatten_one_level as tree_flatten_one_level
from ._vmap import filter_vmap as filter_vmap

__version__ = "0.1.0"
