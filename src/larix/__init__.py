"""larix: pytree-native neural networks for JAX."""

from . import debug as debug

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
from ._jit import filter_jit as filter_jit
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
from ._tree import apply_updates as apply_updates
from ._tree import if_array as if_array
from ._tree import tree_at as tree_at
from ._tree import tree_check as tree_check
from ._tree import tree_equal as tree_equal
from ._tree import tree_flatten_one_level as tree_flatten_one_level

__version__ = "0.1.0"
