"""Input-dependent attribution graphs, two ways: exact (`exact`: every direct effect among the active features,
circuit-tracer's method, the default) and the greedy path search of Dunefsky et al. (2024), §3.2 and App. D,
described here.

With attention patterns and norm scales frozen at their values on the prompt, everything between two MLP reads is
linear. A *reader* is a vector w [d_model] applied to the raw residual stream at one position and stage (stage 2m:
the input of attention layer m, 2l+1: the input of MLP l, 2·n_layers: the final norm), the norm's 1/rms folded
into w. In parallel blocks (GPT-J, Pythia) MLP l reads the block input, so stage 2l+1 is the same stream as 2l
and attention layer l enters together with MLP l. The residual stream there is a sum of components, so w · resid
splits exactly into

    embed    w · resid_pre^(0)[t]
    feature  z_i^(l)[t] (f_dec,i · w)                              transcoder layers l whose MLP is below the read
    error    (y − ŷ)^(l)[t] · w   (the whole MLP output for layers without a transcoder)
    bias     b_dec^(l) · w, attention output biases, and the reader's own bias (b_enc,i or b_U difference)
    skip     (W_skip^(l) x^(l)[t]) · w                              transcoder layers with a skip path
    attn     pattern^(m,h)[t,s] · x1^(m)[s] W_V^(m,h) W_O^(m,h) w   heads (m,h) below the read, sources s ≤ t

A feature node reads w = f_enc,i / rms(resid_mid^(l)[t]); its value is the pre-activation (= z_i when active).
An attention node (m,h,s→t) exists per downstream node a; it reads resid_pre^(m)[s] with
w' = pattern[t,s] / rms(resid_pre^(m)[s]) · W_V W_O w_a, so its value is exactly its contribution into a. A skip
node (l, t) exists per downstream node a too; it reads MLP l's input with
w' = W_skip^(l)ᵀ w_a / rms(resid_mid^(l)[t]): the skip path is linear, so attribution passes through it to the
features, heads and embedding below, instead of stopping at a leaf that a skip transcoder would otherwise fill
with much of each MLP's output.

Algorithm:
  1. One clean forward pass caches the residual stream at every stage, norm scales, attention patterns and MLP
     outputs; every transcoder encodes its layer's MLP input (z, ŷ, error) (`cache`).
  2. The greedy path search builds the graph from the target down (`search`: its docstring gives the steps).
  3. Influence, circuit-tracer's graph scores and influence-based pruning (`prune`).

A feature's direct edge into a node is its residual path at the node's position; its paths through heads run
through attention nodes. `direct_effects` sums both for every upstream feature at every position in one backward
sweep: the whole direct effect, which a real zero-ablation with patterns, scales and other MLP outputs frozen
reproduces exactly (the faithfulness check).

Position 0 (BOS, the attention sink) is never split into features: transcoders are trained on positions 1..
only, so there the whole MLP output is an error node.

Modules, one concept each: `targets` (the target language), `cache` (the prompt cache), `decompose` (readers
split along the stream, one or a batch at a time), `direct` (exact direct effects on one reader, MLP outputs frozen),
`graph` (typed node ids, nodes, edges), `search` (the greedy path search, step 2), `prune` (influence, graph scores,
influence-based pruning, step 3), `exact` (the exact graph: its own docstring).
"""

from interp.attribution.cache import PromptCache, context_length
from interp.attribution.decompose import decompose, decompose_many
from interp.attribution.direct import DirectEffects, direct_effects
from interp.attribution.exact import MAX_FEATURE_NODES, ExactGraph, attribute_exact, exact_graph
from interp.attribution.graph import LEAF_KINDS, PASS_THROUGH_KINDS, AttributionGraph, GraphNode, NodeKey
from interp.attribution.prune import EDGE_THRESHOLD, NODE_THRESHOLD, graph_scores, prune
from interp.attribution.search import N_PATHS, N_STEPS, attribute, target_label
from interp.attribution.targets import (
    FeatureTarget,
    LogitTarget,
    Target,
    check_target,
    parse_target,
    target_string,
    token_text,
)

__all__ = [
    "EDGE_THRESHOLD",
    "MAX_FEATURE_NODES",
    "LEAF_KINDS",
    "NODE_THRESHOLD",
    "N_PATHS",
    "N_STEPS",
    "PASS_THROUGH_KINDS",
    "AttributionGraph",
    "DirectEffects",
    "ExactGraph",
    "FeatureTarget",
    "GraphNode",
    "LogitTarget",
    "NodeKey",
    "PromptCache",
    "Target",
    "attribute",
    "attribute_exact",
    "check_target",
    "context_length",
    "decompose",
    "decompose_many",
    "direct_effects",
    "exact_graph",
    "graph_scores",
    "parse_target",
    "prune",
    "target_label",
    "target_string",
    "token_text",
]
