"""The target language: what an attribution graph explains, written and shown as a string.

    feature:<transcoder id or L<layer>>:<feature>[@pos]      a transcoder feature's pre-activation
    logit:<tok>[-<tok>][@pos]                               a logit, or a logit difference

A token is a JSON-quoted string that must be exactly one token (`logit:" Mary"-" John"`), or a token id. The
position defaults to the last token. `target_string` writes the canonical form (absolute position, tokens as
quoted strings when a tokenizer is given), which is what `graphs.target`, the app and the JSON export show.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass


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
_TOKEN = r'(?:"(?:[^"\\]|\\.)*"|\d+)'
_LOGIT_RE = re.compile(rf"^logit:(?P<a>{_TOKEN})(?:-(?P<b>{_TOKEN}))?(?:@(?P<pos>-?\d+))?$")


def parse_target(spec: str, tokenizer=None) -> Target:
    """'feature:<transcoder id or L<layer>>:<feature>[@pos]' or 'logit:<tok>[-<tok>][@pos]'.

    A token is an id or a double-quoted (JSON) string that must be exactly one token (needs `tokenizer`); the
    position defaults to the last token. Example: 'logit:" 40"-" 20"' (the year-continuation logit difference).
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
    ids = tokenizer(json.loads(text), add_special_tokens=False)["input_ids"]
    if len(ids) != 1:
        pieces = [tokenizer.decode([i]) for i in ids]
        raise ValueError(
            f"Target {spec!r}: {text} is {len(ids)} tokens {pieces}, not one; a logit target is one token "
            "(name its first token, e.g. with a leading space, or give a token id)."
        )
    return ids[0]


def token_text(token: int, tokenizer=None) -> str:
    """A token as it is written in a target: JSON-quoted text with a tokenizer, else the id."""
    return str(token) if tokenizer is None else json.dumps(tokenizer.decode([token]), ensure_ascii=False)


def target_string(target: Target, n_positions: int, transcoder_id: str | None = None, tokenizer=None) -> str:
    """Canonical target text (absolute position), as stored in `graphs.target`: tokens as quoted strings when a
    tokenizer is given (`logit:" Mary"-" John"@14`), ids otherwise."""
    pos = target.position % n_positions
    if isinstance(target, FeatureTarget):
        return f"feature:{transcoder_id or f'L{target.layer}'}:{target.feature}@{pos}"
    other = "" if target.other is None else f"-{token_text(target.other, tokenizer)}"
    return f"logit:{token_text(target.token, tokenizer)}{other}@{pos}"


def check_target(target: Target, n_positions: int, layers) -> None:
    """Clear errors for a target that cannot be attributed on a prompt of `n_positions` tokens with transcoders
    at `layers`."""
    if not -n_positions <= target.position < n_positions:
        raise ValueError(f"Target position {target.position} is outside the prompt ({n_positions} tokens).")
    if isinstance(target, FeatureTarget) and target.layer not in layers:
        raise ValueError(
            f"Target is a feature of layer {target.layer}, which has no transcoder (have {sorted(layers)}); "
            "train one there or pick a feature of a layer that has one."
        )
