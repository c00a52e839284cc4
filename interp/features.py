"""Feature mining: statistics and activating examples for every transcoder feature, in ONE streaming pass.

Input: batches of held-out activations (dicts of tensors: context_id [n], position [n], token_id [n], x [n, d_in]),
rows grouped by context with all positions of a context contiguous and consecutive (a context may straddle two
batches). Memory is bounded by the chunk size and the per-feature state, never by the number of tokens: no
tokens x features matrix is kept.

Algorithm, per chunk of C complete contexts of L positions each (L < 65536):
  1. z = encode(x)                                           # [C*L, d_sae], >= 0, dense or sparse COO
  2. sparse view of z: (row, feature, value) of every active entry (z.nonzero() on a dense z, the only dense pass
     besides the encoder; a sparse z, as TopK's `encode_active` gives, has it already); from it: n_active, sum,
     min and max per feature; a fixed log-spaced histogram per feature
     (HIST_BINS_PER_OCTAVE bins per octave, 2^HIST_MIN_LOG2..2^HIST_MAX_LOG2, plus under- and overflow bins);
     token -> feature sums and counts (buffered, merged by sorting when the buffer doubles).
  3. top examples: in each (context, feature) cell, the `examples_per_context` best positions (scatter-max over
     the sparse entries of (float bits << 16 | position)) are candidates; a running top-k per feature keeps the
     best `n_top`, each with its window of activations (`token_acts`).
  4. band examples: each active cell draws one uniformly random active position with a random priority (the
     same scatter-max trick); a running top-`n_reservoir` by priority is a uniform random sample of active
     tokens, at most one per context (priority sampling).
  Only entries that enter a running top-k get their window, read from the chunk's sparse entries sorted by
  (feature, row): a binary search per window instead of a cache miss per value of z. With `windows=False` the
  pass skips windows altogether and `exact_examples` fills them afterwards (the atlas asset does this).
Finish:
  5. quantiles are read off the log histogram (interpolated geometrically inside a bin, clamped to the exact
     min/max), so their relative error is below one bin width (2^(1/8) - 1 = 9%); the exact alternative would need
     every activation. Band examples: the reservoir is split into `n_bands` activation-quantile bands and the
     strongest `per_band` of each band are kept ('q0' = weakest band).
  6. the token index ranks, for each token id, features by mean activation over ALL occurrences of the token.

`exact_examples` then re-encodes the contexts of chosen examples from a fresh float32 forward pass, so stored
activations equal what a fresh pass gives (shards hold float16 x).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

import torch
from torch import Tensor
from tqdm.auto import tqdm

from interp.model import mlp_hooks

log = logging.getLogger(__name__)

HIST_BINS_PER_OCTAVE = 8
HIST_MIN_LOG2 = -24
HIST_MAX_LOG2 = 16
N_HIST = (HIST_MAX_LOG2 - HIST_MIN_LOG2) * HIST_BINS_PER_OCTAVE + 2  # + underflow (bin 0) and overflow (last)


@dataclass(frozen=True)
class MinerConfig:
    n_top: int = 24  # top examples per feature (cards want >= 20)
    examples_per_context: int = 2  # at most this many top examples from one context (diversity vs coverage)
    n_reservoir: int = 32  # random active examples kept per feature, split into bands at the end
    n_bands: int = 4  # activation-quantile bands of band examples ('q0' weakest .. 'q3' strongest)
    per_band: int = 5  # band examples stored per band
    window: int = 24  # tokens in each example's token_acts
    window_left: int = 16  # tokens before the example position (the rest come after)
    quantile_levels: tuple[float, ...] = (0.1, 0.25, 0.5, 0.75, 0.9, 0.99)
    display_bins: int = 40  # at most this many histogram bins stored per feature (adjacent log bins merged)
    token_index_top: int = 16  # features stored per token id in the token -> features index
    tokens_per_chunk: int = 8192  # rows encoded at once (memory: tokens_per_chunk x d_sae floats)
    windows: bool = True  # gather token_acts in the pass (False: exact_examples() fills them afterwards)
    seed: int = 0


def hist_bin(values: Tensor) -> Tensor:  # positive values [m] -> bin index [m] in 0..N_HIST-1
    b = torch.floor((torch.log2(values.double()) - HIST_MIN_LOG2) * HIST_BINS_PER_OCTAVE).long() + 1
    return b.clamp_(0, N_HIST - 1)


# ---- context chunks -----------------------------------------------------------------------------------------


@dataclass
class Chunk:
    context_id: Tensor  # [C] int64
    position: Tensor  # [C, L] int64, consecutive within a row
    token_id: Tensor  # [C, L] int64
    x: Tensor  # [C*L, d_in]


COLUMNS = ("context_id", "position", "token_id", "x")


def context_chunks(batches: Iterable[dict], tokens_per_chunk: int) -> Iterator[Chunk]:
    """Regroup batches into chunks of whole contexts (a context split across batches is joined)."""
    held: list[dict] = []
    n_held = 0
    for batch in batches:
        held.append(batch)
        n_held += len(batch["context_id"])
        if n_held < tokens_per_chunk:
            continue
        joined = {k: torch.cat([b[k] for b in held]) for k in COLUMNS}
        ids = joined["context_id"]
        cut = len(ids) - int((ids == ids[-1]).sum())  # the last context may continue in the next batch
        if cut:
            yield _as_chunk({k: v[:cut] for k, v in joined.items()})
        held = [{k: v[cut:] for k, v in joined.items()}]
        n_held = len(held[0]["context_id"])
    if n_held:
        yield _as_chunk({k: torch.cat([b[k] for b in held]) for k in COLUMNS})


def _as_chunk(rows: dict) -> Chunk:
    ids, counts = torch.unique_consecutive(rows["context_id"], return_counts=True)
    length = int(counts[0])
    if (counts != length).any():
        raise ValueError(
            f"Contexts in the activation shards have different numbers of rows ({sorted(set(counts.tolist()))}); "
            "the miner needs every context's positions contiguous and of one length."
        )
    position = rows["position"].view(len(ids), length).long()
    if length > 1 and (position.diff(dim=1) != 1).any():
        raise ValueError("Positions within a context are not consecutive; re-materialize `activations`.")
    x = rows["x"].float()
    if not torch.isfinite(x).all():
        raise ValueError(
            f"Activation shards contain NaN/inf values (contexts {ids[0]}..{ids[-1]}); re-harvest."
        )
    return Chunk(ids.long(), position, rows["token_id"].view(len(ids), length).long(), x)


# ---- running top-k per feature ------------------------------------------------------------------------------


class _SparseChunk:
    """The active entries of one chunk's z, sorted by (feature, row), for window look-ups without touching z.

    Gathering windows from dense z costs a cache miss per value (d_sae floats apart); here a window is a
    binary search plus the few active entries inside it.
    """

    def __init__(self, rows: Tensor, feats: Tensor, vals: Tensor, n_rows: int, length: int):
        self.n_rows, self.length = n_rows, length
        self.key, order = (feats * n_rows + rows).sort()  # [m]
        self.vals = vals[order]

    def windows(self, c: Tensor, start: Tensor, f: Tensor, width: int) -> Tensor:
        """Activations of features f [n] at positions start..start+width-1 of contexts c [n] -> [n, width]."""
        lo = f * self.n_rows + c * self.length + start  # [n]
        i0 = torch.searchsorted(self.key, lo)
        counts = torch.searchsorted(self.key, lo + width) - i0
        owner = torch.repeat_interleave(torch.arange(len(lo)), counts)  # [hits]
        first = torch.cumsum(counts, 0) - counts
        idx = i0[owner] + torch.arange(len(owner)) - first[owner]
        out = torch.zeros(len(lo), width)
        out[owner, self.key[idx] - lo[owner]] = self.vals[idx]
        return out


class _RunningTopK:
    """The k best (score, example) of every feature, merged chunk by chunk; feature-major state.

    score [d_sae, k] (`empty` = no example; candidates without an example must score below `empty`, so they never
    enter); per example: context_id, position, token_id, window_start,
    activation [d_sae, k] and token_acts [d_sae, k, W]. A merge gathers windows only for the entries that
    enter the kept set, so its cost is (number of new entries x W), not chunk x d_sae x W.
    """

    FIELDS = ("context_id", "position", "token_id", "window_start", "activation", "token_acts")

    def __init__(self, k: int, d_sae: int, width: int, left: int, empty: float, windows: bool = True):
        self.k, self.width, self.left, self.empty, self.windows = k, width, left, empty, windows
        dtype = torch.int64 if isinstance(empty, int) else torch.float32
        self.score = torch.full((d_sae, k), empty, dtype=dtype)
        ints = {name: torch.zeros((d_sae, k), dtype=torch.int64) for name in self.FIELDS[:4]}
        self.data = {**ints, "activation": torch.zeros(d_sae, k), "token_acts": torch.zeros(d_sae, k, width)}

    def merge(
        self,
        chunk: Chunk,
        z: _SparseChunk | None,
        score: Tensor,
        local_pos: Tensor,
        act: Tensor,
        group: int = 1,
    ) -> None:
        """Candidates score [C*group, d_sae] (< self.empty = none) at local positions local_pos [C*group, d_sae]
        with activation act [C*group, d_sae]; candidate row i belongs to context i // group of the chunk; z gives
        the windows (None when windows are off). Kept slots are unordered: each entering candidate overwrites a
        slot that dropped out."""
        both = torch.cat([self.score, score.T], dim=1)  # [d_sae, k + C*group]
        best, idx = both.topk(self.k, dim=1, sorted=False)  # [d_sae, k]
        entering = idx >= self.k
        if not entering.any():
            return
        kept = torch.zeros_like(both, dtype=torch.bool).scatter_(1, idx, True)  # [d_sae, k + C*group]
        f, j = entering.nonzero(as_tuple=True)  # both in feature order, with equal counts per feature
        _, slot = (~kept[:, : self.k]).nonzero(as_tuple=True)  # the old slots that dropped out
        cand = idx[f, j] - self.k
        c, p = cand // group, local_pos[cand, f]
        start = (p - self.left).clamp(0, chunk.position.shape[1] - self.width)  # [n_new]
        flat = f * self.k + slot  # [n_new] index into the flattened [d_sae * k] state
        d = self.data
        self.score.view(-1)[flat] = best[f, j]
        d["context_id"].view(-1)[flat] = chunk.context_id[c]
        d["position"].view(-1)[flat] = chunk.position[c, p]
        d["token_id"].view(-1)[flat] = chunk.token_id[c, p]
        d["window_start"].view(-1)[flat] = chunk.position[c, start]
        d["activation"].view(-1)[flat] = act[cand, f]
        if z is not None:
            d["token_acts"].view(-1, self.width).index_copy_(0, flat, z.windows(c, start, f, self.width))


# ---- the miner ------------------------------------------------------------------------------------------------


@dataclass
class Examples:
    """Examples in long form, one row each (kind: 'top' or 'q<band>')."""

    feature: Tensor  # [m] int64
    kind: list[str]  # [m]
    rank: Tensor  # [m] int64, 0 = strongest within (feature, kind)
    context_id: Tensor  # [m]
    position: Tensor  # [m]
    token_id: Tensor  # [m]
    activation: Tensor  # [m] float32
    window_start: Tensor  # [m] position of token_acts[:, 0]
    token_acts: Tensor  # [m, W]


@dataclass
class FeatureStats:
    n_tokens: int
    n_active: Tensor  # [d_sae] int64
    n_contexts: Tensor  # [d_sae] int64, contexts where the feature fires at least once
    mean_act: Tensor  # [d_sae] over active tokens (0 when never active)
    max_act: Tensor  # [d_sae]
    min_act: Tensor  # [d_sae] smallest active value (0 when never active)
    quantile_levels: tuple[float, ...]
    quantiles: Tensor  # [d_sae, n_levels] (0 when never active)
    hist: Tensor  # [d_sae, N_HIST] int64 counts of active values per log bin
    examples: Examples
    token_index: dict[str, Tensor] = field(
        default_factory=dict
    )  # token_id, rank, feature, mean_act, count  [m]

    @property
    def density(self) -> Tensor:  # [d_sae]
        return self.n_active.double() / max(self.n_tokens, 1)


class FeatureMiner:
    """Feed chunks with `update`, then `finish()`; see the module docstring for the algorithm."""

    def __init__(self, encode: Callable[[Tensor], Tensor], d_sae: int, cfg: MinerConfig = MinerConfig()):
        self.encode, self.d_sae, self.cfg = encode, d_sae, cfg
        self.gen = torch.Generator().manual_seed(cfg.seed)
        self.n_tokens = 0
        self.n_active = torch.zeros(d_sae, dtype=torch.int64)
        self.n_contexts = torch.zeros(d_sae, dtype=torch.int64)
        self.sum = torch.zeros(d_sae, dtype=torch.float64)
        self.max = torch.zeros(d_sae)
        self.min = torch.full((d_sae,), math.inf)
        self.hist = torch.zeros(d_sae * N_HIST, dtype=torch.int64)
        self.token_count = torch.zeros(0, dtype=torch.int64)  # occurrences per token id
        # token -> feature sums: (token * d_sae + feature, sum, count) parts, merged when the buffer doubles
        self.pairs: list[tuple[Tensor, Tensor, Tensor]] = []
        self.n_pairs_compacted = self.n_buffered = 0
        self.width: int | None = None
        self.top: _RunningTopK | None = None
        self.reservoir: _RunningTopK | None = None

    @torch.no_grad()
    def update(self, chunk: Chunk) -> None:
        c, length = chunk.position.shape
        if self.width is None:
            self.width = min(self.cfg.window, length)
            w, left = self.width, self.cfg.window_left
            on = self.cfg.windows
            self.top = _RunningTopK(self.cfg.n_top, self.d_sae, w, left, -1.0, on)
            self.reservoir = _RunningTopK(self.cfg.n_reservoir, self.d_sae, w, left, -1, on)
        z = self.encode(chunk.x)  # [C*L, d_sae], >= 0 (ReLU / TopK), dense or sparse COO
        self.n_tokens += z.shape[0]
        if z.is_sparse:  # e.g. Transcoder.encode_active: no dense pass at all
            z = z.coalesce()
            (rows, feats), vals = z.indices(), z.values().float()
        else:
            rows, feats = z.nonzero().unbind(1)  # [m] active entries: the only dense pass besides encode
            vals = z[rows, feats].float()  # [m]
        self._update_stats(feats, vals)
        self._update_token_index(chunk.token_id.view(-1), rows, feats, vals)
        del z
        sparse = _SparseChunk(rows, feats, vals, c * length, length) if self.cfg.windows else None
        cell = (rows // length) * self.d_sae + feats  # [m] (context, feature) cell of each entry
        pos = rows % length
        self._update_top(chunk, sparse, cell, pos, vals)
        self._update_reservoir(chunk, sparse, cell, pos, vals)

    def _update_stats(self, feats: Tensor, vals: Tensor) -> None:
        self.n_active += torch.bincount(feats, minlength=self.d_sae)
        self.sum.index_add_(0, feats, vals.double())
        self.max.scatter_reduce_(0, feats, vals, "amax")
        self.min.scatter_reduce_(0, feats, vals, "amin")
        self.hist.index_add_(0, feats * N_HIST + hist_bin(vals), torch.ones_like(feats))

    def _update_token_index(self, tokens: Tensor, rows: Tensor, feats: Tensor, vals: Tensor) -> None:
        counts = torch.bincount(tokens)
        if len(counts) > len(self.token_count):
            grow = self.token_count.new_zeros(len(counts) - len(self.token_count))
            self.token_count = torch.cat([self.token_count, grow])
        self.token_count[: len(counts)] += counts
        keys = tokens[rows] * self.d_sae + feats
        self.pairs.append((keys, vals.double(), torch.ones_like(keys)))
        self.n_buffered += len(keys)
        if self.n_buffered > max(2 * self.n_pairs_compacted, 1 << 22):
            self._compact_pairs()

    def _compact_pairs(self) -> None:
        keys, sums, counts = (torch.cat(t) for t in zip(*self.pairs))
        self.pairs = [_sum_by_key(keys, sums, counts)]
        self.n_pairs_compacted = self.n_buffered = len(self.pairs[0][0])

    def _best_per_cell(self, n_cells: int, cell: Tensor, packed: Tensor) -> Tensor:
        """[n_cells] max of packed values per cell (-1 where a cell has no entry)."""
        best = torch.full((n_cells,), -1, dtype=torch.int64)
        return best.scatter_reduce_(0, cell, packed, "amax")

    def _update_top(
        self, chunk: Chunk, z: _SparseChunk | None, cell: Tensor, pos: Tensor, vals: Tensor
    ) -> None:
        # the j-th best position of every (context, feature) cell: max of packed (float bits << 16 | position);
        # positive float32 bit patterns order like the values
        c, length = chunk.position.shape
        m = min(self.cfg.examples_per_context, length)
        packed = (vals.view(torch.int32).long() << 16) | pos
        scores, where = [], []
        for _ in range(m):
            best = self._best_per_cell(c * self.d_sae, cell, packed)
            value = (best >> 16).to(torch.int32).view(torch.float32)
            scores.append(torch.where(best >= 0, value, -math.inf).view(c, self.d_sae))
            where.append((best & 0xFFFF).clamp(max=length - 1).view(c, self.d_sae))
            rest = packed != best[cell]  # drop each cell's winner, go again
            cell, packed = cell[rest], packed[rest]
        score = torch.stack(scores, 1).view(c * m, self.d_sae)  # [C*m, d_sae], row = context * m + j
        self.top.merge(chunk, z, score, torch.stack(where, 1).view(c * m, self.d_sae), score, group=m)

    def _update_reservoir(
        self, chunk: Chunk, z: _SparseChunk | None, cell: Tensor, pos: Tensor, vals: Tensor
    ) -> None:
        # one uniformly random active position per cell: max of packed (random priority << 16 | position)
        c, length = chunk.position.shape
        packed = (torch.randint(0, 1 << 40, (len(cell),), generator=self.gen) << 16) | pos
        best = self._best_per_cell(c * self.d_sae, cell, packed)
        chosen = packed == best[cell]  # the sampled entry of each cell
        act = torch.zeros(c * self.d_sae).index_put_((cell[chosen],), vals[chosen]).view(c, self.d_sae)
        best = best.view(c, self.d_sae)  # [C, d_sae]
        self.n_contexts += (best >= 0).sum(0)
        score = torch.where(best >= 0, best, -2)  # below the reservoir's empty (-1): never enters
        self.reservoir.merge(chunk, z, score, (best & 0xFFFF).clamp(max=length - 1), act)

    # ---- finish -----------------------------------------------------------------------------------------

    def finish(self) -> FeatureStats:
        if self.n_tokens == 0:
            raise ValueError("No activations to mine: the held-out activation shards are empty.")
        active = self.n_active > 0
        hist = self.hist.view(self.d_sae, N_HIST)
        min_act = torch.where(active, self.min, 0.0)
        quantiles = hist_quantiles(hist, torch.tensor(self.cfg.quantile_levels), min_act, self.max)
        band_levels = torch.arange(1, self.cfg.n_bands, dtype=torch.float64) / self.cfg.n_bands
        band_edges = hist_quantiles(hist, band_levels, min_act, self.max)  # [d_sae, n_bands - 1]
        examples = _concat_examples(
            [_long_form(self.top, "top", None)]
            + [
                _long_form(self.reservoir, f"q{b}", (band_edges, b, self.cfg.per_band))
                for b in range(self.cfg.n_bands)
            ]
        )
        return FeatureStats(
            n_tokens=self.n_tokens,
            n_active=self.n_active,
            n_contexts=self.n_contexts,
            mean_act=(self.sum / self.n_active.clamp(min=1)).float(),
            max_act=self.max,
            min_act=min_act,
            quantile_levels=self.cfg.quantile_levels,
            quantiles=quantiles,
            hist=hist,
            examples=examples,
            token_index=self._token_index(),
        )

    def _token_index(self) -> dict[str, Tensor]:
        self._compact_pairs()
        keys, sums, counts = self.pairs[0]
        token, feature = keys // self.d_sae, keys % self.d_sae
        mean = sums / self.token_count[token]  # [pairs] E[z_f | token], inactive occurrences count as 0
        # one sort by (token ascending, mean descending): token + a fraction that falls as the mean grows
        order = torch.argsort(token.double() + 0.5 * (1 - mean / (mean.max() * 1.001)))
        token, feature, mean, counts = token[order], feature[order], mean[order].float(), counts[order]
        first = torch.searchsorted(token, token, side="left")
        rank = torch.arange(len(token)) - first
        keep = rank < self.cfg.token_index_top
        return {
            "token_id": token[keep],
            "rank": rank[keep],
            "feature": feature[keep],
            "mean_act": mean[keep],
            "count": counts[keep],
        }


def _sum_by_key(keys: Tensor, sums: Tensor, counts: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Sorted unique keys with their summed sums and counts."""
    keys, order = keys.sort()
    uniq, inv = torch.unique_consecutive(keys, return_inverse=True)
    s = torch.zeros(len(uniq), dtype=sums.dtype).index_add_(0, inv, sums[order])
    n = torch.zeros(len(uniq), dtype=counts.dtype).index_add_(0, inv, counts[order])
    return uniq, s, n


def hist_quantiles(hist: Tensor, levels: Tensor, lo: Tensor, hi: Tensor) -> Tensor:
    """Quantiles [d_sae, n_levels] of each feature's active values from its log histogram [d_sae, N_HIST].

    The target rank q*n falls in one bin; the value is interpolated geometrically inside that bin and clamped to
    the exact [lo, hi] of the feature. Error < one bin width (factor 2^(1/HIST_BINS_PER_OCTAVE)).
    """
    n = hist.sum(1, keepdim=True).double()  # [d_sae, 1]
    cum = hist.cumsum(1).double()  # [d_sae, N_HIST]
    target = levels.double().view(1, -1) * n  # [d_sae, n_levels]
    b = torch.searchsorted(cum.contiguous(), target.contiguous(), side="left").clamp(max=N_HIST - 1)
    below = torch.where(b > 0, cum.gather(1, (b - 1).clamp(min=0)), torch.zeros_like(target))
    in_bin = hist.gather(1, b).double().clamp(min=1)
    frac = ((target - below) / in_bin).clamp(0, 1)
    log2_lo = (b.double() - 1) / HIST_BINS_PER_OCTAVE + HIST_MIN_LOG2
    value = torch.exp2(log2_lo + frac / HIST_BINS_PER_OCTAVE)
    value = torch.minimum(torch.maximum(value, lo.double().view(-1, 1)), hi.double().view(-1, 1))
    return torch.where(n > 0, value, 0.0).float()


def display_histogram(counts: Tensor, lo: float, hi: float, max_bins: int) -> tuple[list[float], list[int]]:
    """One feature's log histogram counts [N_HIST] cut to its non-empty span, adjacent bins merged to <= max_bins.

    Edges lie on the log grid, except the outer two, which are the exact smallest and largest activation.
    """
    nz = counts.nonzero().squeeze(1)
    if len(nz) == 0:
        return [], []
    a, b = int(nz[0]), int(nz[-1]) + 1
    group = math.ceil((b - a) / max_bins)
    n = math.ceil((b - a) / group)
    span = torch.zeros(n * group, dtype=counts.dtype)
    span[: b - a] = counts[a:b]
    merged = span.view(n, group).sum(1)
    lower = [2.0 ** ((a + j * group - 1) / HIST_BINS_PER_OCTAVE + HIST_MIN_LOG2) for j in range(n)]
    return [lo, *lower[1:], hi], merged.tolist()


def _long_form(state: _RunningTopK, kind: str, band: tuple[Tensor, int, int] | None) -> Examples:
    """Examples of one kind in long form; for a band, the strongest `per_band` reservoir samples inside it."""
    acts = state.data["activation"]  # [d_sae, k]
    valid = state.score != state.empty
    if band is None:
        score, k = torch.where(valid, acts, -math.inf), state.k
    else:
        edges, b, k = band  # edges [d_sae, n_bands - 1]
        which = torch.searchsorted(edges.contiguous(), acts.contiguous(), side="right")  # [d_sae, k_res]
        score, k = torch.where(valid & (which == b), acts, -math.inf), min(k, state.k)
    best, idx = score.topk(k, dim=1)  # [d_sae, k]
    feature, rank = (best > -math.inf).nonzero(as_tuple=True)
    slot = idx[feature, rank]
    d = state.data
    return Examples(
        feature=feature,
        kind=[kind] * len(feature),
        rank=rank,
        **{name: d[name][feature, slot] for name in _RunningTopK.FIELDS},
    )


def _concat_examples(parts: list[Examples]) -> Examples:
    return Examples(
        **{
            name: sum((getattr(p, name) for p in parts), [])
            if name == "kind"
            else torch.cat([getattr(p, name) for p in parts])
            for name in Examples.__dataclass_fields__
        }
    )


def mine(
    encode: Callable[[Tensor], Tensor],
    d_sae: int,
    batches: Iterable[dict],
    cfg: MinerConfig = MinerConfig(),
    total_tokens: int | None = None,
) -> FeatureStats:
    """One streaming pass over `batches` (see the module docstring); `encode` maps x [n, d_in] -> z [n, d_sae],
    dense or sparse COO (`Transcoder.encode_active`, which spares TopK the dense z and its nonzero scan)."""
    miner = FeatureMiner(encode, d_sae, cfg)
    with tqdm(total=total_tokens, unit="tok", desc="mining features", disable=None) as bar:
        for chunk in context_chunks(batches, cfg.tokens_per_chunk):
            miner.update(chunk)
            bar.update(chunk.x.shape[0])
    return miner.finish()


def forward_chunks(
    model,
    tokens: Tensor,  # [n_ctx, ctx_len] int64, BOS first
    context_ids: Tensor,  # [n_ctx] int64
    layers: list[int],
    batch_size: int = 16,
) -> Iterator[dict[int, Chunk]]:
    """Chunks of whole contexts for every layer from one float32 forward pass per batch (positions 1..): the
    stream `mine_layers` takes, with exact activations, so no re-encoding pass is needed."""
    from interp.activations import harvest

    body = tokens.shape[1] - 1
    for i, batch in enumerate(harvest(model, tokens, context_ids, layers, batch_size)):
        rows = slice(i * batch_size, i * batch_size + batch.context_id.numel() // body)
        ids, toks = context_ids[rows].long(), tokens[rows, 1:].long().contiguous()  # [C], [C, body]
        position = torch.arange(1, body + 1).repeat(len(ids), 1)  # [C, body]
        yield {layer: Chunk(ids, position, toks, x.float().cpu()) for layer, (x, _) in batch.acts.items()}


def mine_layers(
    encoders: dict[int, tuple[Callable[[Tensor], Tensor], int]],  # layer -> (encode, d_sae)
    chunks: Iterable[dict[int, Chunk]],
    cfg: MinerConfig = MinerConfig(),
    total_tokens: int | None = None,
) -> dict[int, FeatureStats]:
    """`mine` for several layers at once from one stream of {layer: Chunk} (one forward pass feeds every layer)."""
    miners = {layer: FeatureMiner(encode, d_sae, cfg) for layer, (encode, d_sae) in encoders.items()}
    with tqdm(total=total_tokens, unit="tok", desc=f"mining {len(miners)} layer(s)", disable=None) as bar:
        for item in chunks:
            for layer, miner in miners.items():
                miner.update(item[layer])
            bar.update(next(iter(item.values())).x.shape[0])
    return {layer: miner.finish() for layer, miner in miners.items()}


@torch.no_grad()
def exact_examples(
    examples: Examples,
    encode_contexts: Callable[[Tensor], Tensor],
    tokens: Callable[[Tensor], Tensor],
    which: Tensor,
    contexts_per_batch: int = 16,
) -> int:
    """Recompute activation and token_acts of the examples selected by `which` [m] bool, in place.

    tokens(context_ids [b]) -> token ids [b, ctx_len]; encode_contexts(tokens [b, ctx_len]) -> z [b, ctx_len, d_sae]
    from a fresh float32 forward pass. Returns the number of contexts re-encoded.
    """
    sel = which.nonzero().squeeze(1)  # [n] example rows
    ctx_ids = torch.unique(examples.context_id[sel])
    w = examples.token_acts.shape[1]
    for i in tqdm(range(0, len(ctx_ids), contexts_per_batch), desc="exact examples", disable=None):
        batch_ids = ctx_ids[i : i + contexts_per_batch]  # [b]
        z = encode_contexts(tokens(batch_ids)).float()  # [b, ctx_len, d_sae]
        rows = sel[torch.isin(examples.context_id[sel], batch_ids)]  # examples in these contexts
        b = torch.searchsorted(batch_ids, examples.context_id[rows])
        f = examples.feature[rows]
        span = examples.window_start[rows].view(-1, 1) + torch.arange(w).view(1, -1)  # [r, W]
        examples.token_acts[rows] = z[b.view(-1, 1), span, f.view(-1, 1)]
        examples.activation[rows] = z[b, examples.position[rows], f]
    return len(ctx_ids)


def fresh_encoder(model, encode: Callable[[Tensor], Tensor], layer: int) -> Callable[[Tensor], Tensor]:
    """tokens [b, ctx_len] -> z [b, ctx_len, d_sae]: a float32 forward pass to `layer`'s MLP input, then encode."""
    hook = mlp_hooks(layer)[0]
    device = next(model.parameters()).device

    @torch.no_grad()
    def run(tokens: Tensor) -> Tensor:
        _, cache = model.run_with_cache(
            tokens.to(device), names_filter=lambda n: n == hook, stop_at_layer=layer + 1
        )
        return encode(cache[hook].float()).cpu()  # [b, ctx_len, d_sae]

    return run
