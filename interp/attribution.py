"""Input-dependent attribution graphs: the greedy path search of Dunefsky et al. (2024), §3.2 and App. D.

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
    skip     (W_skip^(l) x^(l)[t]) · w
    attn     pattern^(m,h)[t,s] · x1^(m)[s] W_V^(m,h) W_O^(m,h) w   heads (m,h) below the read, sources s ≤ t

A feature node reads w = f_enc,i / rms(resid_mid^(l)[t]); its value is the pre-activation (= z_i when active).
An attention node (m,h,s→t) exists per downstream node a; it reads resid_pre^(m)[s] with
w' = pattern[t,s] / rms(resid_pre^(m)[s]) · W_V W_O w_a, so its value is exactly its contribution into a.

Algorithm:
  1. One clean forward pass caches the residual stream at every stage, norm scales, attention patterns and MLP
     outputs; every transcoder encodes its layer's MLP input (z, ŷ, error).
  2. The target is a reader: a feature pre-activation at (layer, position) or a logit (difference) at a position.
  3. Greedy search for `n_steps` steps. Each frontier path ends at node a with multiplier μ_a (attribution to the
     target per unit of a's value; μ_target = 1) and proposes every upstream feature, attention node and
     embedding b with path attribution μ_a · w(b→a). The top `n_paths` proposals by |attribution| over the
     whole frontier become the next frontier, with μ_b = μ_a · w(b→a) / z_b for features, μ_b = μ_a for
     attention nodes (embeddings end a path).
  4. The graph holds every node on a kept path. Each feature, attention and target node gets an edge from every
     upstream graph node, from every error, bias, skip and embedding leaf at its position, and one `pruned`
     edge with the sum of the contributions left out, so its incoming weights sum to its value.
  5. Influence (attribution flowing to the target): the target's is its value; every other node's is
     Σ over its out-edges weight · μ_dst, computed in decreasing stage order.

A feature's direct edge into a node is its residual path at the node's position; its paths through heads run
through attention nodes. `direct_effects` sums both for every upstream feature at every position in one backward
sweep: the whole direct effect, which a real zero-ablation with patterns, scales and other MLP outputs frozen
reproduces exactly (the faithfulness check).

Position 0 (BOS, the attention sink) is never split into features: transcoders are trained on positions 1..
only, so there the whole MLP output is an error node.

Node ids: 'target', 'feat:L<l>:<pos>:<i>', 'attn:L<m>.H<h>:<s>><t>|<dst id>', 'embed:<pos>',
'err:L<l>:<pos>', 'bias:<dec|attn|enc|unembed>:L<l>:<pos>', 'skip:L<l>:<pos>', 'pruned|<dst id>'.
"""

from __future__ import annotations

import logging
import re
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor

from interp.edges import ov_weights
from interp.model import parallel_blocks
from interp.transcoder import Transcoder

log = logging.getLogger(__name__)

LEAF_KINDS = ("embed", "error", "bias", "skip", "pruned")


# ---- targets -------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FeatureTarget:
    """Pre-activation of one transcoder feature at one position."""

    layer: int
    feature: int
    position: int = -1


@dataclass(frozen=True)
class LogitTarget:
    """Logit of `token` (minus the logit of `other`, if given) predicted at `position`."""

    token: int
    other: int | None = None
    position: int = -1


Target = FeatureTarget | LogitTarget

_FEATURE_RE = re.compile(r"^feature:(?P<tc>.+):(?P<f>\d+)(?:@(?P<pos>-?\d+))?$")
_TOKEN = r'(?:"[^"]*"|\d+)'
_LOGIT_RE = re.compile(rf"^logit:(?P<a>{_TOKEN})(?:-(?P<b>{_TOKEN}))?(?:@(?P<pos>-?\d+))?$")


def parse_target(spec: str, tokenizer=None) -> Target:
    """'feature:<transcoder id or L<layer>>:<feature>[@pos]' or 'logit:<tok>[-<tok>][@pos]'.

    A token is an id or a double-quoted string that must be exactly one token (needs `tokenizer`); the position
    defaults to the last token. Example: 'logit:" 40"-" 20"' (the year-continuation logit difference).
    """
    m = _FEATURE_RE.match(spec)
    if m:
        layers = re.findall(r"L(\d+)", m["tc"])
        if not layers:
            raise ValueError(f"Target {spec!r}: cannot find the layer ('L<layer>') in {m['tc']!r}.")
        return FeatureTarget(int(layers[-1]), int(m["f"]), int(m["pos"] or -1))
    m = _LOGIT_RE.match(spec)
    if m:
        a, b = (_token_id(m[g], tokenizer, spec) if m[g] else None for g in ("a", "b"))
        return LogitTarget(a, b, int(m["pos"] or -1))
    raise ValueError(
        f"Target {spec!r} is not 'feature:<transcoder>:<feature>[@pos]' or 'logit:<token>[-<token>][@pos]'."
    )


def _token_id(text: str, tokenizer, spec: str) -> int:
    if not text.startswith('"'):
        return int(text)
    if tokenizer is None:
        raise ValueError(f"Target {spec!r} names a token by its text; a tokenizer is needed.")
    ids = tokenizer(text[1:-1], add_special_tokens=False)["input_ids"]
    if len(ids) != 1:
        raise ValueError(f"Target {spec!r}: {text} is {len(ids)} tokens {ids}, not one; use a token id.")
    return ids[0]


def target_string(target: Target, n_positions: int, transcoder_id: str | None = None) -> str:
    """Canonical target text (absolute position), as stored in `graphs.target`."""
    pos = target.position % n_positions
    if isinstance(target, FeatureTarget):
        return f"feature:{transcoder_id or f'L{target.layer}'}:{target.feature}@{pos}"
    other = "" if target.other is None else f"-{target.other}"
    return f"logit:{target.token}{other}@{pos}"


# ---- the frozen forward pass ---------------------------------------------------------------------------------


class PromptCache:
    """What the linear decomposition needs from one clean forward pass; residual stream indexed by stage."""

    @torch.no_grad()
    def __init__(self, model, tokens: Tensor, transcoders: Mapping[int, Transcoder]):
        cfg = model.cfg
        n = cfg.n_layers
        self.n_layers, self.n_heads = n, cfg.n_heads
        self.center = getattr(cfg, "normalization_type", "RMS") in (
            "LN",
            "LNPre",
        )  # LayerNorm subtracts the mean
        self.tokens = tokens  # [pos]
        self.transcoders = dict(transcoders)
        self.parallel = parallel_blocks(model)
        mid = "hook_resid_pre" if self.parallel else "hook_resid_mid"  # what MLP l reads
        resid_names, scale_names = [], []
        for layer in range(n):
            resid_names += [f"blocks.{layer}.hook_resid_pre", f"blocks.{layer}.{mid}"]
            scale_names += [f"blocks.{layer}.ln1.hook_scale", f"blocks.{layer}.ln2.hook_scale"]
        wanted = set(resid_names + scale_names + [f"blocks.{n - 1}.hook_resid_post", "ln_final.hook_scale"])
        for m in range(n):
            wanted |= {
                f"blocks.{m}.{h}" for h in ("ln1.hook_normalized", "attn.hook_pattern", "hook_mlp_out")
            }
        wanted |= {f"blocks.{layer}.ln2.hook_normalized" for layer in self.transcoders}
        logits, cache = model.run_with_cache(tokens[None], names_filter=lambda name: name in wanted)
        self.logits = logits[0]  # [pos, d_vocab]

        def stack(names: list[str]) -> Tensor:
            return torch.stack([cache[name][0] for name in names])

        self.resid = stack(resid_names + [f"blocks.{n - 1}.hook_resid_post"])  # [2n+1, pos, d_model]
        self.inv_scale = 1 / stack(scale_names + ["ln_final.hook_scale"])[..., 0]  # [2n+1, pos]
        self.x1 = stack([f"blocks.{m}.ln1.hook_normalized" for m in range(n)])  # [n, pos, d_model]
        self.pattern = stack([f"blocks.{m}.attn.hook_pattern" for m in range(n)])  # [n, n_heads, pos, pos]
        self.mlp_out = stack([f"blocks.{m}.hook_mlp_out" for m in range(n)])  # [n, pos, d_model]
        self.W_V, self.W_O = ov_weights(model)  # [n, n_heads, d_model, d_head], [n, n_heads, d_head, d_model]
        self.attn_bias = _attn_bias(model, self.W_O)  # [n, d_model]
        self.W_U, self.b_U = model.W_U, model.b_U  # [d_model, d_vocab], [d_vocab]
        self.x2, self.z, self.y_hat, self.skip, self.b_enc = {}, {}, {}, {}, {}
        for layer, tc in self.transcoders.items():
            x = cache[f"blocks.{layer}.ln2.hook_normalized"][0]  # [pos, d_model]
            self.x2[layer] = x
            self.z[layer] = tc.encode(x)  # [pos, d_sae]
            self.y_hat[layer] = tc.decode(self.z[layer], x)  # [pos, d_model]
            self.skip[layer] = None if tc.W_skip is None else tc.skip_out(x)  # [pos, d_model]
            self.b_enc[layer] = tc.b_enc - tc.b_pre @ tc.W_enc  # [d_sae], b_pre folded in

    def attn_layers_below(self, stage: int) -> int:
        """How many attention layers (0, 1, ...) have their output in resid[stage]."""
        return stage // 2 if self.parallel else (stage + 1) // 2

    def attn_entering(self, k: int) -> int | None:
        """The attention layer whose output is added between resid[k-1] and resid[k], if any."""
        m = self.attn_layers_below(k) - 1
        return m if m >= 0 and self.attn_layers_below(k - 1) == m else None

    def reader(self, stage: int, position: int, v: Tensor) -> Tensor:
        """Vector on the raw residual stream that reads v through the (frozen) norm at stage/position."""
        if self.center:
            v = v - v.mean()
        return v * self.inv_scale[stage, position]

    def target_reader(self, target: Target) -> tuple[int, int, Tensor, float]:
        """(stage, position, reader [d_model], bias): the target's value is reader · resid[stage][position] + bias."""
        t = target.position % len(self.tokens)
        if isinstance(target, FeatureTarget):
            if target.layer not in self.transcoders:
                raise ValueError(
                    f"Target layer {target.layer} has no transcoder (have {sorted(self.transcoders)})."
                )
            stage = 2 * target.layer + 1
            v = self.transcoders[target.layer].W_enc[:, target.feature]
            return stage, t, self.reader(stage, t, v), float(self.b_enc[target.layer][target.feature])
        stage, v, bias = 2 * self.n_layers, self.W_U[:, target.token], self.b_U[target.token]
        if target.other is not None:
            v, bias = v - self.W_U[:, target.other], bias - self.b_U[target.other]
        return stage, t, self.reader(stage, t, v.detach()), float(bias)

    def feature_value(self, layer: int, position: int, feature: int) -> float:
        """Pre-activation of a transcoder feature (independent of the decomposition: straight from the encoder)."""
        tc = self.transcoders[layer]
        return float(self.x2[layer][position] @ tc.W_enc[:, feature] + self.b_enc[layer][feature])

    def logit_value(self, target: LogitTarget, position: int) -> float:
        out = self.logits[position, target.token]
        if target.other is not None:
            out = out - self.logits[position, target.other]
        return float(out)


def _attn_bias(model, W_O: Tensor) -> Tensor:
    """Constant output of each attention layer: b_O + Σ_h b_V,h W_O,h (patterns sum to 1). [n_layers, d_model]"""
    n, d = W_O.shape[0], W_O.shape[-1]
    try:
        b_O = model.b_O  # [n, d_model]
    except (AttributeError, TypeError):  # Llama-style attention has no biases (the bridge returns None)
        b_O = None
    try:
        b_V = model.b_V  # [n, n_kv_heads, d_head]
    except (AttributeError, TypeError):
        b_V = None
    out = torch.zeros(n, d, device=W_O.device) if b_O is None else b_O.clone()
    if b_V is not None:
        b_V = b_V.repeat_interleave(W_O.shape[1] // b_V.shape[1], dim=1)  # [n, n_heads, d_head]
        out += torch.einsum("mhe,mhed->md", b_V, W_O)
    return out


# ---- decomposition of one reader -----------------------------------------------------------------------------


@dataclass
class _Decomposition:
    feat_layer: Tensor  # [F] int64
    feat_index: Tensor  # [F] int64
    feat_w: Tensor  # [F] contributions of active features at the read position
    attn: Tensor  # [M, n_heads, t+1] contributions of each head from each source position
    ov: Tensor  # [M, n_heads, d_model] W_V W_O w per head (to build attention readers)
    leaves: dict[str, float]  # leaf node id -> contribution (embed, errors, biases, skip)

    def candidates(self) -> Tensor:  # [F + M·H·(t+1) + 1]: features, attention entries, embedding
        embed = torch.tensor([next(iter(self.leaves.values()))], device=self.feat_w.device)
        return torch.cat([self.feat_w, self.attn.flatten(), embed])

    def total(self) -> float:
        return float(self.feat_w.sum() + self.attn.sum()) + sum(self.leaves.values())


@torch.no_grad()
def decompose(pc: PromptCache, stage: int, t: int, w: Tensor) -> _Decomposition:
    """Split w · resid[stage][t] into the contributions of every upstream component (they sum to it exactly)."""
    leaves = {f"embed:{t}": float(pc.resid[0, t] @ w)}  # first entry: the embedding (see candidates())
    layers, indices, weights = [], [], []
    for layer in range(stage // 2):  # MLPs whose output is already in the stream
        tc = pc.transcoders.get(layer)
        if tc is None or t == 0:  # no transcoder, or BOS (transcoders are trained on positions 1.. only)
            leaves[f"err:L{layer}:{t}"] = float(pc.mlp_out[layer, t] @ w)
            continue
        z = pc.z[layer][t]  # [d_sae]
        active = z.nonzero()[:, 0]
        layers.append(torch.full_like(active, layer))
        indices.append(active)
        weights.append(z[active] * (tc.W_dec[active] @ w))
        leaves[f"bias:dec:L{layer}:{t}"] = float(tc.b_dec @ w)
        leaves[f"err:L{layer}:{t}"] = float((pc.mlp_out[layer, t] - pc.y_hat[layer][t]) @ w)
        if pc.skip[layer] is not None:
            leaves[f"skip:L{layer}:{t}"] = float(pc.skip[layer][t] @ w)
    n_attn = pc.attn_layers_below(stage)
    for m in range(n_attn):
        b = float(pc.attn_bias[m] @ w)
        if b != 0.0:
            leaves[f"bias:attn:L{m}:{t}"] = b
    u = torch.einsum("mhed,d->mhe", pc.W_O[:n_attn], w)  # [M, H, d_head]
    ov = torch.einsum("mhde,mhe->mhd", pc.W_V[:n_attn], u)  # [M, H, d_model]
    vals = torch.einsum("msd,mhd->mhs", pc.x1[:n_attn, : t + 1], ov)  # [M, H, t+1]
    attn = pc.pattern[:n_attn, :, t, : t + 1] * vals
    empty = torch.zeros(0, dtype=torch.int64, device=w.device)
    return _Decomposition(
        torch.cat(layers) if layers else empty,
        torch.cat(indices) if indices else empty,
        torch.cat(weights) if weights else torch.zeros(0, device=w.device),
        attn,
        ov,
        leaves,
    )


# ---- exact direct effects of every upstream component -------------------------------------------------------


@dataclass
class DirectEffects:
    """Every upstream component's contribution to one reader through all of the frozen linear model's paths.

    `decompose` splits a reader along the residual stream at one position and leaves attention as separate
    (head, source) terms; this pushes the reader back through every attention layer as well (patterns and norm
    scales frozen, MLP outputs constant), so a feature's entry is its whole direct effect: the residual path plus
    every path through heads at any source position, but none through another MLP. Zero-ablating the feature in
    the real model with patterns, scales and the other MLP outputs frozen changes the reader by exactly minus its
    entry. The entries sum to the reader's value.
    """

    features: dict[int, Tensor]  # layer -> [t+1, d_sae]: z_i (f_dec,i · g), zero where inactive and at BOS
    embed: Tensor  # [t+1]: each position's embedding
    # layer -> [t+1]: the transcoder's error, or the whole MLP output where the layer has no transcoder (or at BOS)
    errors: dict[int, Tensor]
    bias_and_skip: float  # decoder and attention biases, and the transcoders' skip paths (W_skip x)

    def budget(self) -> dict[str, float]:
        """The reader's value by kind of source (the values sum to it)."""

        def errors(covered: bool) -> float:
            return sum(
                float(e.sum()) for layer, e in self.errors.items() if (layer in self.features) == covered
            )

        return {
            "features": sum(float(f.sum()) for f in self.features.values()),
            "transcoder_errors": errors(True),
            "mlps_without_transcoder": errors(False),
            "embeddings": float(self.embed.sum()),
            "biases_and_skip": self.bias_and_skip,
        }

    def total(self) -> float:
        return sum(self.budget().values())


@torch.no_grad()
def direct_effects(pc: PromptCache, stage: int, t: int, w: Tensor) -> DirectEffects:
    """Exact direct effects on w · resid[stage][t] of every feature, embedding and error at positions ≤ t.

    One backward sweep of the linear map from stage 0 to `stage`: g[s] = ∂(w · resid[stage][t]) / ∂resid[k][s]
    starts as w at t; an MLP output (constant) leaves g unchanged and collects its components' shares; attention
    layer m adds, at every source s, Σ_h Σ_t' pattern[m,h,t',s] · reader(2m, s, W_V W_O g[t']). In parallel
    blocks attention m and MLP m enter together, and resid[2m+1] (what MLP m reads) equals resid[2m].
    """
    n = t + 1
    g = torch.zeros(n, w.shape[0], device=w.device, dtype=w.dtype)  # [t+1, d_model]
    g[t] = w
    features, errors, bias_and_skip = {}, {}, 0.0
    for k in range(stage, 0, -1):
        m = pc.attn_entering(k)
        if m is not None:  # attention layer m (reading resid[2m] through its norm) adds into resid[k]
            bias_and_skip += float(pc.attn_bias[m] @ g.sum(0))
            u = torch.einsum("hef,tf->hte", pc.W_O[m], g)  # [H, t+1, d_head]
            ov = torch.einsum("hde,hte->htd", pc.W_V[m], u)  # [H, t+1, d_model]
            back = torch.einsum("hts,htd->sd", pc.pattern[m, :, :n, :n], ov)  # [t+1 (source), d_model]
            if pc.center:
                back = back - back.mean(-1, keepdim=True)
            back = back * pc.inv_scale[2 * m, :n, None]
        if k % 2 == 0:  # MLP l adds into resid[k]
            layer = k // 2 - 1
            share = (pc.mlp_out[layer, :n] * g).sum(-1)  # [t+1]
            tc = pc.transcoders.get(layer)
            if tc is None:
                errors[layer] = share
            else:
                z = pc.z[layer][:n].clone()  # [t+1, d_sae]
                z[0] = 0.0  # BOS: the whole MLP output is the error (transcoders never saw position 0)
                features[layer] = z * (g @ tc.W_dec.T)
                rest = g @ tc.b_dec  # [t+1]
                if pc.skip[layer] is not None:
                    rest = rest + (pc.skip[layer][:n] * g).sum(-1)
                rest[0] = 0.0
                errors[layer] = share - features[layer].sum(-1) - rest
                bias_and_skip += float(rest.sum())
        if m is not None:
            g = g + back
    return DirectEffects(features, (pc.resid[0, :n] * g).sum(-1), errors, bias_and_skip)


# ---- the graph -----------------------------------------------------------------------------------------------


@dataclass
class GraphNode:
    node_id: str
    kind: str  # 'target', 'feature', 'attn', 'embed', 'error', 'bias', 'skip' or 'pruned'
    layer: int | None
    position: int | None
    feature: int | None  # feature index (feature), head (attn), token id (embed), target token (logit target)
    activation: float | None  # feature pre-activation, attention contribution, target value, pruned remainder
    influence: float = 0.0
    label: str = ""
    stage: int = -1  # where the node reads the residual stream (leaves: -1)
    reader: Tensor | None = field(default=None, repr=False)  # [d_model] (non-leaf nodes)
    own_bias: tuple[str, float] | None = field(default=None, repr=False)


@dataclass
class AttributionGraph:
    tokens: list[int]
    target: Target
    target_value: float
    nodes: dict[str, GraphNode]
    edges: dict[tuple[str, str], float]  # (src, dst) -> weight: src contributes weight to dst's value
    config: dict

    def incoming(self, node_id: str) -> dict[str, float]:
        return {src: w for (src, dst), w in self.edges.items() if dst == node_id}

    def top_paths(self, n: int = 5, beam: int = 64) -> list[tuple[float, list[str]]]:
        """The n strongest target-rooted chains (target first) by path attribution, found by beam search."""
        incoming = defaultdict(list)
        for (src, dst), w in self.edges.items():
            incoming[dst].append((src, w))
        found: list[tuple[float, list[str]]] = []
        frontier = [(1.0, ["target"])]  # (multiplier of the last node, path)
        while frontier:
            grown = []
            for mu, path in frontier:
                for src, w in incoming[path[-1]]:
                    node = self.nodes[src]
                    if node.kind in ("bias", "pruned"):
                        continue
                    attr = mu * w
                    found.append((attr, [*path, src]))
                    if node.kind == "attn":
                        grown.append((mu, [*path, src]))
                    elif node.kind == "feature" and node.activation:
                        grown.append((attr / node.activation, [*path, src]))
            grown.sort(key=lambda g: -abs(g[0] * (self.nodes[g[1][-1]].activation or 0.0)))
            frontier = grown[:beam]
        return sorted(found, key=lambda p: -abs(p[0]))[:n]


class _Builder:
    def __init__(self, pc: PromptCache, token_strs: Sequence[str] | None):
        self.pc, self.token_strs = pc, token_strs
        self.nodes: dict[str, GraphNode] = {}
        self.decomps: dict[str, _Decomposition] = {}
        self.attn_children: dict[str, dict[tuple[int, int, int], str]] = defaultdict(dict)

    def tok(self, pos: int) -> str:
        return repr(self.token_strs[pos]) if self.token_strs else str(int(self.pc.tokens[pos]))

    def decomposition(self, node_id: str) -> _Decomposition:
        if node_id not in self.decomps:
            node = self.nodes[node_id]
            self.decomps[node_id] = decompose(self.pc, node.stage, node.position, node.reader)
        return self.decomps[node_id]

    def feature(self, layer: int, t: int, i: int) -> str:
        node_id = f"feat:L{layer}:{t}:{i}"
        if node_id not in self.nodes:
            pc = self.pc
            tc = pc.transcoders[layer]
            stage = 2 * layer + 1
            self.nodes[node_id] = GraphNode(
                node_id, "feature", layer, t, i, pc.feature_value(layer, t, i),
                label=f"L{layer} #{i} @{t} {self.tok(t)}", stage=stage,
                reader=pc.reader(stage, t, tc.W_enc[:, i]),
                own_bias=(f"bias:enc:L{layer}:{t}", float(pc.b_enc[layer][i])),
            )  # fmt: skip
        return node_id

    def attn(self, dst: str, m: int, h: int, s: int, value: float) -> str:
        pc, dst_node = self.pc, self.nodes[dst]
        t = dst_node.position
        node_id = f"attn:L{m}.H{h}:{s}>{t}|{dst}"
        if node_id not in self.nodes:
            ov = self.decomposition(dst).ov[m, h]  # [d_model]
            reader = pc.pattern[m, h, t, s] * pc.reader(2 * m, s, ov)
            self.nodes[node_id] = GraphNode(
                node_id,
                "attn",
                m,
                s,
                h,
                value,
                label=f"L{m}.H{h} {s}→{t} {self.tok(s)}",
                stage=2 * m,
                reader=reader,
            )
            self.attn_children[dst][(m, h, s)] = node_id
        return node_id

    def leaf_label(self, node_id: str, kind: str, layer: int | None, pos: int | None) -> str:
        where = "" if pos is None else f" @{pos} {self.tok(pos)}"
        if kind == "embed":
            return f"embed{where}"
        if kind == "error":
            what = "error" if layer in self.pc.transcoders and pos != 0 else "MLP (no transcoder)"
            return f"L{layer} {what}{where}"
        if kind == "bias":
            return f"{node_id.split(':')[1]} bias L{layer}{where}"
        if kind == "skip":
            return f"L{layer} skip{where}"
        return f"pruned → {node_id.split('|', 1)[1]}"

    def leaf(self, node_id: str) -> str:
        if node_id not in self.nodes:
            kind = {"embed": "embed", "err": "error", "bias": "bias", "skip": "skip", "pruned": "pruned"}[
                re.split(r"[:|]", node_id)[0]
            ]
            layer = re.search(r":L(\d+)", node_id)
            pos = None if kind == "pruned" else int(node_id.rsplit(":", 1)[1])
            token = int(self.pc.tokens[pos]) if kind == "embed" else None
            layer = int(layer[1]) if layer else None
            self.nodes[node_id] = GraphNode(
                node_id, kind, layer, pos, token, None, label=self.leaf_label(node_id, kind, layer, pos)
            )
        return node_id


@torch.no_grad()
def attribute(
    model,
    tokens: Tensor,  # [pos] token ids (BOS included if the model expects it)
    transcoders: Mapping[int, Transcoder],
    target: Target,
    n_paths: int = 16,
    n_steps: int = 3,
    token_strs: Sequence[str] | None = None,
    cache: PromptCache | None = None,
) -> AttributionGraph:
    """Greedy top-`n_paths` path search from `target` back through features, heads and embeddings (see top)."""
    pc = cache or PromptCache(model, tokens, transcoders)
    b = _Builder(pc, token_strs)
    # 2. the target reader
    stage, t, reader, bias = pc.target_reader(target)
    if isinstance(target, FeatureTarget):
        value = pc.feature_value(target.layer, t, target.feature)
        own_bias = (f"bias:enc:L{target.layer}:{t}", bias)
        layer, label = target.layer, f"L{target.layer} #{target.feature} @{t}"
    else:
        value, own_bias = pc.logit_value(target, t), (f"bias:unembed:L{pc.n_layers}:{t}", bias)
        layer, label = None, f"logit {target.token}" + ("" if target.other is None else f" − {target.other}")
    b.nodes["target"] = GraphNode(
        "target", "target", layer, t, getattr(target, "feature", getattr(target, "token", None)), value,
        label=label, stage=stage, reader=reader, own_bias=own_bias,
    )  # fmt: skip
    # 3. greedy search
    frontier: list[tuple[str, float]] = [("target", 1.0)]
    for _ in range(n_steps):
        proposals: list[tuple[float, str, int, float]] = []  # (|attr|, dst, candidate index, mu)
        for dst, mu in frontier:
            cand = b.decomposition(dst).candidates()
            top = cand.abs().topk(min(n_paths, len(cand)))
            proposals += [(abs(mu) * float(a), dst, int(i), mu) for a, i in zip(top.values, top.indices)]
        proposals.sort(key=lambda p: -p[0])
        frontier = []
        for _, dst, i, mu in proposals[:n_paths]:
            d = b.decomposition(dst)
            n_feat, t_dst = len(d.feat_w), b.nodes[dst].position
            if i < n_feat:
                src = b.feature(int(d.feat_layer[i]), t_dst, int(d.feat_index[i]))
                z = b.nodes[src].activation
                frontier.append((src, mu * float(d.feat_w[i]) / z if z else 0.0))
            elif i < n_feat + d.attn.numel():
                m, h, s = torch.unravel_index(torch.tensor(i - n_feat), d.attn.shape)
                src = b.attn(dst, int(m), int(h), int(s), float(d.attn[m, h, s]))
                frontier.append((src, mu))
            # else: the embedding, a leaf that is always in the graph
    # 4. edges of every non-leaf node
    edges: dict[tuple[str, str], float] = {}
    for dst in [n for n, node in b.nodes.items() if node.kind not in LEAF_KINDS]:
        node, d = b.nodes[dst], b.decomposition(dst)
        pruned = 0.0
        for layer, i, w in zip(d.feat_layer.tolist(), d.feat_index.tolist(), d.feat_w.tolist()):
            src = f"feat:L{layer}:{node.position}:{i}"
            if src in b.nodes:
                edges[(src, dst)] = w
            else:
                pruned += w
        kept = b.attn_children.get(dst, {})
        for (m, h, s), src in kept.items():
            edges[(src, dst)] = float(d.attn[m, h, s])
        left_out = torch.ones_like(d.attn, dtype=torch.bool)
        for m, h, s in kept:
            left_out[m, h, s] = False
        pruned += float(d.attn[left_out].sum())
        leaves = dict(d.leaves)
        if node.own_bias is not None:
            leaves[node.own_bias[0]] = node.own_bias[1]
        for src, w in leaves.items():
            if w != 0.0:
                edges[(b.leaf(src), dst)] = w
        if pruned != 0.0:
            src = b.leaf(f"pruned|{dst}")
            b.nodes[src].activation = pruned
            edges[(src, dst)] = pruned
    # 5. influence
    incoming = defaultdict(list)
    for (src, dst), w in edges.items():
        incoming[dst].append((src, w))
    mult = {"target": 1.0}
    b.nodes["target"].influence = value
    for dst in sorted(
        (n for n in b.nodes if b.nodes[n].kind not in LEAF_KINDS), key=lambda n: -b.nodes[n].stage
    ):
        node = b.nodes[dst]
        if dst != "target" and node.kind == "feature":
            mult[dst] = node.influence / node.activation if node.activation else 0.0
        elif node.kind == "attn":
            mult[dst] = mult[dst.split("|", 1)[1]]
        for src, w in incoming[dst]:
            b.nodes[src].influence += w * mult[dst]
    config = {
        "n_paths": n_paths,
        "n_steps": n_steps,
        "layers": sorted(pc.transcoders),
        "n_layers": pc.n_layers,
    }
    log.info("attribution graph: %d nodes, %d edges, target %.4g", len(b.nodes), len(edges), value)
    return AttributionGraph(tokens.tolist(), target, value, b.nodes, edges, config)
