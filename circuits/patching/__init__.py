"""Activation patching, batched over every index of a target at once.

```python
from circuits.patching import patch
from interp.metrics import logit_diff, mean_metric

result = patch(model, batch, "resid_pre", mean_metric(logit_diff), normalise=True)
result.values          # [n_layers, n_pos]
result.to_frame()      # one row per (layer, pos)
```
"""

from circuits.patching.engine import Direction, patch
from circuits.patching.metric import PatchMetric
from circuits.patching.result import PatchingResult
from circuits.patching.targets import TARGETS, IndexSpace, index_space

__all__ = [
    "TARGETS",
    "Direction",
    "IndexSpace",
    "PatchMetric",
    "PatchingResult",
    "index_space",
    "patch",
]
