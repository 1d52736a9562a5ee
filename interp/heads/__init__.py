"""Attention-head specialization: scores from attention patterns and from weights, role
labels and groups of heads.

```python
from interp.heads import (
    ablation_importance, assign_roles, cluster_heads, copying_scores, head_composition,
    head_weights, induction_probe_scores,
)

scores = induction_probe_scores(model, n_sequences=16, seed=0)   # HeadScores
scores.to_frame()                            # one row per head, one column per score
copying = copying_scores(head_weights(model))                    # [layer, head]
roles = assign_roles(scores, copying=copying)                     # roles per head
groups = cluster_heads(roles, n_groups=4, seed=0)                 # + a `group` column
composition = head_composition(model)        # Q/K/V composition + random baseline
importance = ablation_importance(model, task.batch(), mean_metric(logit_diff))  # .values [L, H]
```

The package, one job per module:

```
patterns.py      scores from attention patterns (previous/next/duplicate token, induction,
                 sink and special-token mass, entropy, confidence, offset profile,
                 positional heads, TransformerLens's detector scores): the entry points
pattern_sums.py  the engine behind them: patterns -> per-head sums and counts, batch by batch
head_scores.py   HeadScores (the result: to_frame, save, load) and the score names
weights.py       per-head weights, copying scores, Q/K/V composition; HeadComposition
roles.py         role thresholds, role labels, k-means groups
ablation.py      ablation importance of each head on a task (zero or mean), batched over heads
sentences.py     plain English sentences (written for this toolkit) and their tokenization
experiment.py    the `heads` experiment kind (imported by its entry point, not here)
```
"""

from interp.heads.ablation import ABLATION_MODES, AblationResult, ablation_importance
from interp.heads.head_scores import DEFAULT_OFFSETS, SCORE_NAMES, HeadScores
from interp.heads.patterns import (
    induction_probe_scores,
    model_pattern_scores,
    pattern_scores,
    repeated_random_tokens,
)
from interp.heads.roles import ROLE_NAMES, RoleThresholds, assign_roles, cluster_heads
from interp.heads.sentences import ENGLISH_SENTENCES, tokenize_sentences
from interp.heads.weights import (
    COMPOSITION_KINDS,
    HeadComposition,
    HeadWeights,
    composition_baseline,
    composition_scores,
    copying_scores,
    full_ov_eigenvalues,
    head_composition,
    head_weights,
    weights_from_params,
)

__all__ = [
    "ABLATION_MODES",
    "COMPOSITION_KINDS",
    "DEFAULT_OFFSETS",
    "ENGLISH_SENTENCES",
    "ROLE_NAMES",
    "SCORE_NAMES",
    "AblationResult",
    "HeadComposition",
    "HeadScores",
    "HeadWeights",
    "RoleThresholds",
    "ablation_importance",
    "assign_roles",
    "cluster_heads",
    "composition_baseline",
    "composition_scores",
    "copying_scores",
    "full_ov_eigenvalues",
    "head_composition",
    "head_weights",
    "induction_probe_scores",
    "model_pattern_scores",
    "pattern_scores",
    "repeated_random_tokens",
    "tokenize_sentences",
    "weights_from_params",
]
