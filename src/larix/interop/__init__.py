"""Weights from and to other libraries: PyTorch state dicts, Flax (linen and NNX), Haiku.

Each converter has three functions: `from_<format>(model, weights)` loads the other
library's weights into a larix model (checking everything first, with one error that
names every mismatch), `to_<format>(model)` exports them, and `plan_<format>(model,
weights)` shows the proposed mapping without loading. The larix model must have the same
architecture; `rename=` maps names that differ. See the guide "Porting weights".

Importing this package imports none of those libraries. The Flax and Haiku converters
import theirs when called (install them with `pip install -e ".[flax]"` or
`".[haiku]"` from a clone of larix); the PyTorch converter needs only NumPy.
"""

from ._flax import from_linen as from_linen
from ._flax import from_nnx as from_nnx
from ._flax import plan_linen as plan_linen
from ._flax import plan_nnx as plan_nnx
from ._flax import to_linen as to_linen
from ._flax import to_nnx as to_nnx
from ._haiku import from_haiku as from_haiku
from ._haiku import plan_haiku as plan_haiku
from ._haiku import to_haiku as to_haiku
from ._torch import from_torch as from_torch
from ._torch import plan_torch as plan_torch
from ._torch import to_torch as to_torch
