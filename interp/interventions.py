"""Interventions: steer, clamp and ablate transcoder features in the running model (the replacement model).

An edit names a feature i of the transcoder at layer L, the positions it applies to (or every position), and what
happens to its activation z_i there:

    set v      z_i <- v            (clamp)
    scale s    z_i <- s * z_i
    add a      z_i <- z_i + a      (steer: adds a * f_dec,i to the MLP output; a is in activation units)
    zero       z_i <- 0            (ablate)

At each edited layer the MLP output at positions 1.. becomes the transcoder's output with the edit applied to z,
plus that layer's error term:

    y' = transcoder(x; z edited) + (y - transcoder(x))  =  y + sum_i (z'_i - z_i) f_dec,i

computed in the second form, so an edit that changes nothing (add 0, scale 1) reproduces the real model bit for
bit, and an edit changes only its feature's contribution (every other feature of the layer, its bias, skip path
and error stay as they are). z is the transcoder's encoding of this run's x (`blocks.L.ln2.hook_normalized`), so
an edit at a lower layer changes what a higher edited layer sees; every MLP without an edit runs for real.
Position 0 (BOS, the attention sink) is never edited: transcoders are trained on positions 1.. only.

Attention is live by default. With `freeze_attention` every attention pattern (`blocks.m.attn.hook_pattern`) is
taken from an unedited run on the same tokens, so an edit reaches later positions only through the values and
outputs of attention, not by moving where it looks. Generation is greedy with no KV cache (short prompts): at
each new token the whole sequence runs again, edits held at every position they name ('all' includes the new
ones); with frozen attention each step runs an unedited pass for the patterns first.

`logit_effects` puts the actual change of a target logit beside the change the edited features' direct effects
predict (interp.attribution: residual path plus attention paths with patterns and norm scales frozen, no path
through another MLP), so a user sees where the linear picture holds.

Deep links write edits as text (`parse_edits` / `format_edits`): 'L12:345:add:8,L20:17:zero@3_4'.
"""

from __future__ import annotations

import contextlib
import math
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from interp.attribution import LogitTarget, PromptCache, direct_effects
from interp.evals import replace_mlp_out
from interp.transcoder import Transcoder

OPS = ("set", "scale", "add", "zero")
MAX_EDITS = 64  # more edits than this in one request are refused
MAX_STRENGTH = 1e4  # |value| above this is refused: activations are O(1-100), residual norms O(100-1000)
MAX_NEW_TOKENS = 256


class InterventionError(ValueError):
    """A bad edit request; the message names the problem and what is valid."""


@dataclass(frozen=True)
class Edit:
    layer: int
    feature: int
    op: str = "add"  # one of OPS
    value: float = 0.0  # v for set, s for scale, a for add; ignored for zero
    positions: tuple[int, ...] | None = None  # None: every position 1.. (new tokens included)

    def new_z(self, z: Tensor) -> Tensor:  # z [..] -> edited z [..]
        if self.op == "set":
            return torch.full_like(z, self.value)
        if self.op == "scale":
            return z * self.value
        if self.op == "add":
            return z + self.value
        return torch.zeros_like(z)

    def __str__(self) -> str:
        value = "" if self.op == "zero" else f":{self.value:g}"
        where = "" if self.positions is None else "@" + "_".join(map(str, self.positions))
        return f"L{self.layer}:{self.feature}:{self.op}{value}{where}"


# ---- text form (deep links) ----------------------------------------------------------------------------------

_EDIT_RE = re.compile(
    r"^L(?P<layer>-?\d+):(?P<feature>-?\d+):(?P<op>[a-z]+)(?::(?P<value>[^@:]+))?(?:@(?P<pos>[\d_]+|all))?$"
)


def parse_edits(text: str) -> list[Edit]:
    """'L<layer>:<feature>:<op>[:<value>][@<pos>_<pos>...|@all]' joined by ','; raises InterventionError."""
    items = [t.strip() for t in (text or "").split(",") if t.strip()]
    if len(items) > MAX_EDITS:
        raise InterventionError(f"{len(items)} edits given; at most {MAX_EDITS} edits are allowed at once.")
    edits = []
    for item in items:
        m = _EDIT_RE.match(item)
        if not m:
            raise InterventionError(
                f"Edit {item!r} is not 'L<layer>:<feature>:<op>[:<value>][@<positions>]', e.g. 'L12:345:add:8' "
                f"or 'L3:7:zero@2_5' (ops: {', '.join(OPS)})."
            )
        if m["op"] not in OPS:
            raise InterventionError(f"Edit {item!r}: unknown op {m['op']!r}; use one of {', '.join(OPS)}.")
        if m["op"] != "zero" and m["value"] is None:
            raise InterventionError(f"Edit {item!r}: {m['op']} needs a value, e.g. '{item}:4'.")
        try:
            value = float(m["value"]) if m["value"] is not None else 0.0
        except ValueError:
            raise InterventionError(f"Edit {item!r}: the value {m['value']!r} is not a number.") from None
        pos = m["pos"]
        positions = None if pos in (None, "all") else tuple(int(p) for p in pos.split("_") if p)
        edits.append(Edit(int(m["layer"]), int(m["feature"]), m["op"], value, positions or None))
    return edits


def format_edits(edits: Sequence[Edit]) -> str:
    return ",".join(map(str, edits))


# ---- checks --------------------------------------------------------------------------------------------------


def check_edits(
    n_layers: int,
    transcoders: Mapping[int, Transcoder],
    edits: Sequence[Edit],
    n_positions: int | None = None,
) -> None:
    """Raise InterventionError naming the first problem: too many edits, a layer out of range or without a
    transcoder, an unknown feature or op, a NaN/inf or enormous value, a position that is BOS or past the prompt."""
    if len(edits) > MAX_EDITS:
        raise InterventionError(f"{len(edits)} edits given; at most {MAX_EDITS} edits are allowed at once.")
    for e in edits:
        if not 0 <= e.layer < n_layers:
            raise InterventionError(
                f"Edit {e}: layer {e.layer} does not exist; the model has layers 0..{n_layers - 1}."
            )
        tc = transcoders.get(e.layer)
        if tc is None:
            have = ", ".join(map(str, sorted(transcoders))) or "none"
            raise InterventionError(f"Edit {e}: layer {e.layer} has no transcoder (layers with one: {have}).")
        if not 0 <= e.feature < tc.d_sae:
            raise InterventionError(
                f"Edit {e}: feature {e.feature} does not exist; layer {e.layer}'s transcoder has features "
                f"0..{tc.d_sae - 1}."
            )
        if e.op not in OPS:
            raise InterventionError(f"Edit {e}: unknown op {e.op!r}; use one of {', '.join(OPS)}.")
        if not math.isfinite(e.value):
            raise InterventionError(f"Edit {e}: the value {e.value} is not a finite number.")
        if abs(e.value) > MAX_STRENGTH:
            raise InterventionError(
                f"Edit {e}: the value {e.value:g} is too large; use a value between {-MAX_STRENGTH:g} and "
                f"{MAX_STRENGTH:g}."
            )
        for p in e.positions or ():
            if p < 1 or (n_positions is not None and p >= n_positions):
                last = "" if n_positions is None else f"..{n_positions - 1}"
                raise InterventionError(
                    f"Edit {e}: position {p} cannot be edited; positions are 1{last} (0 is BOS, never edited)."
                )


# ---- the edited forward pass ---------------------------------------------------------------------------------


def _edited_layer(tc: Transcoder, edits: list[Edit], captured: dict | None, layer: int):
    """replace_mlp_out function for one layer: y [b, p-1, d_out] (positions 1..) -> y + sum (z'_i - z_i) f_dec,i."""
    features = sorted({e.feature for e in edits})
    col = {f: j for j, f in enumerate(features)}

    def fn(x: Tensor, y: Tensor) -> Tensor:  # x [b, p-1, d_in], y [b, p-1, d_out]
        x = x.to(tc.W_enc.dtype)
        if tc.cfg.architecture == "topk" or captured is not None:
            z_all = tc.encode(x)  # [b, p-1, d_sae]
            z = z_all[..., features]  # [b, p-1, n_f]
        else:  # ReLU: only the edited features' columns are needed
            idx = torch.tensor(features, device=x.device)
            z = ((x - tc.b_pre) @ tc.W_enc[:, idx] + tc.b_enc[idx]).relu()  # [b, p-1, n_f]
        new = z.clone()
        pos = torch.arange(1, x.shape[1] + 1, device=x.device)  # absolute positions of the columns
        for e in edits:
            where = (
                torch.ones_like(pos, dtype=torch.bool)
                if e.positions is None
                else torch.isin(pos, torch.tensor(e.positions, device=x.device))
            )
            j = col[e.feature]
            new[:, where, j] = e.new_z(new[:, where, j])
        if captured is not None:
            z_all = z_all.clone()
            z_all[..., features] = new
            captured[layer] = z_all
        delta = (new - z) @ tc.W_dec[features]  # [b, p-1, d_out]
        return y + delta.to(y.dtype)

    return fn


@contextlib.contextmanager
def edited(
    model,
    transcoders: Mapping[int, Transcoder],
    edits: Sequence[Edit],
    patterns: Mapping[str, Tensor] | None = None,
    captured: dict | None = None,
) -> Iterator[None]:
    """Within the block the model runs with the edits (and, given `patterns`, those attention patterns frozen).
    `captured`, if given, receives layer -> edited z [batch, pos-1, d_sae] of every edited layer."""
    by_layer: dict[int, list[Edit]] = {}
    for e in edits:
        by_layer.setdefault(e.layer, []).append(e)
    fns = {layer: _edited_layer(transcoders[layer], es, captured, layer) for layer, es in by_layer.items()}
    hooks = [(name, lambda act, hook, p=p: p) for name, p in (patterns or {}).items()]
    with replace_mlp_out(model, fns), model.hooks(fwd_hooks=hooks):
        yield


def pattern_hooks(model) -> list[str]:
    return [f"blocks.{m}.attn.hook_pattern" for m in range(model.cfg.n_layers)]


@dataclass
class EditedRun:
    clean_logits: Tensor  # [pos, d_vocab]
    logits: Tensor  # [pos, d_vocab] with the edits
    features: dict[int, Tensor]  # edited layer -> z [pos, d_sae] as edited (row 0, BOS: zeros)


@torch.no_grad()
def run_with_edits(
    model,
    tokens: Tensor,  # [pos], BOS first
    transcoders: Mapping[int, Transcoder],
    edits: Sequence[Edit],
    freeze_attention: bool = False,
) -> EditedRun:
    """Logits of the unedited and the edited model on `tokens`, and the edited layers' features."""
    check_edits(model.cfg.n_layers, transcoders, edits, len(tokens))
    names = set(pattern_hooks(model)) if freeze_attention else set()
    clean, cache = model.run_with_cache(tokens[None], names_filter=lambda n: n in names)
    patterns = {n: cache[n] for n in names} if freeze_attention else None
    captured: dict[int, Tensor] = {}
    with edited(model, transcoders, edits, patterns, captured):
        logits = model(tokens[None])
    features = {
        layer: torch.cat([torch.zeros_like(z[0, :1]), z[0]]) for layer, z in captured.items()
    }  # [pos, d_sae]
    return EditedRun(clean[0], logits[0], features)


@torch.no_grad()
def next_logits(
    model,
    tokens: Tensor,  # [pos]
    transcoders: Mapping[int, Transcoder],
    edits: Sequence[Edit],
    freeze_attention: bool = False,
) -> Tensor:
    """Logits [d_vocab] for the token after `tokens`, with the edits (no checks: the caller checked)."""
    if not edits:
        return model(tokens[None])[0, -1]
    patterns = None
    if freeze_attention:
        names = set(pattern_hooks(model))
        _, cache = model.run_with_cache(tokens[None], names_filter=lambda n: n in names)
        patterns = {n: cache[n] for n in names}
    with edited(model, transcoders, edits, patterns):
        return model(tokens[None])[0, -1]


@torch.no_grad()
def generate(
    model,
    tokens: Tensor,  # [pos] prompt, BOS first
    transcoders: Mapping[int, Transcoder],
    edits: Sequence[Edit],
    max_new_tokens: int = 20,
    freeze_attention: bool = False,
) -> Tensor:
    """Greedy continuation [n_new] (stops after EOS) with the edits held at every new position."""
    check_edits(model.cfg.n_layers, transcoders, edits, len(tokens))
    if not 1 <= max_new_tokens <= MAX_NEW_TOKENS:
        raise InterventionError(f"max_new_tokens must be 1..{MAX_NEW_TOKENS}, got {max_new_tokens}.")
    eos = getattr(model.tokenizer, "eos_token_id", None) if getattr(model, "tokenizer", None) else None
    seq = tokens.clone()
    for _ in range(max_new_tokens):
        nxt = next_logits(model, seq, transcoders, edits, freeze_attention).argmax()
        seq = torch.cat([seq, nxt[None].to(seq)])
        if eos is not None and int(nxt) == eos:
            break
    return seq[len(tokens) :]


# ---- what moved ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class MovedToken:
    token: int
    p_before: float
    p_after: float

    @property
    def delta(self) -> float:
        return self.p_after - self.p_before


def moved_tokens(
    clean_logits: Tensor, edited_logits: Tensor, k: int = 10, pool: int = 50
) -> list[MovedToken]:
    """Of the top-`pool` next tokens before or after the edit, the k whose probability moved most.
    Logits [d_vocab] at one position."""
    p0, p1 = clean_logits.float().softmax(-1), edited_logits.float().softmax(-1)
    cand = torch.cat([p0.topk(pool).indices, p1.topk(pool).indices]).unique()
    order = (p1[cand] - p0[cand]).abs().argsort(descending=True)[:k]
    return [MovedToken(int(cand[i]), float(p0[cand[i]]), float(p1[cand[i]])) for i in order]


@dataclass(frozen=True)
class EditEffect:
    edit: Edit | None  # None: all edits together
    predicted: float  # change of the target logit by the edited features' direct effects
    actual: float  # change of the target logit in the running model


@torch.no_grad()
def logit_effects(
    model,
    tokens: Tensor,  # [pos]
    transcoders: Mapping[int, Transcoder],
    edits: Sequence[Edit],
    token: int,
    freeze_attention: bool = False,
    each: bool = True,
) -> list[EditEffect]:
    """Predicted (direct effect) and actual change of the logit of `token` at the last position, for each edit
    alone (each=True) and, last, for all edits together.

    Prediction: the clean run's frozen linear model (interp.attribution.PromptCache + direct_effects). Its feature
    entries are z_i (f_dec,i . g) with g the reader pulled back to the MLP output, so giving it the activation
    *changes* z'_i - z_i in place of z yields the change the direct effects predict.
    """
    check_edits(model.cfg.n_layers, transcoders, edits, len(tokens))
    layers = sorted({e.layer for e in edits})
    pc = PromptCache(model, tokens, {layer: transcoders[layer] for layer in layers})
    stage, t, reader, _ = pc.target_reader(LogitTarget(int(token)))
    clean = float(pc.logits[t, token])
    groups = ([[e] for e in edits] if each and len(edits) > 1 else []) + [list(edits)]
    out = []
    for k, group in enumerate(groups):
        delta = {layer: torch.zeros_like(pc.z[layer]) for layer in layers}  # [pos, d_sae]
        for e in group:
            z = pc.z[layer := e.layer][:, e.feature]  # [pos]
            new = z + delta[layer][:, e.feature]
            for p in range(1, len(tokens)):
                if e.positions is None or p in e.positions:
                    new[p] = e.new_z(new[p])
            delta[layer][:, e.feature] = new - z
        saved = pc.z
        pc.z = delta
        try:
            predicted = sum(float(f.sum()) for f in direct_effects(pc, stage, t, reader).features.values())
        finally:
            pc.z = saved
        actual = float(next_logits(model, tokens, transcoders, group, freeze_attention)[token]) - clean
        out.append(EditEffect(group[0] if k < len(groups) - 1 else None, predicted, actual))
    return out
