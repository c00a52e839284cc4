"""interp.attribution.targets and the bad inputs: targets written and shown as token text, and clear errors for a
multi-token target, a prompt longer than the context, a feature target on a layer without a transcoder."""

from __future__ import annotations

import pytest
import torch

from interp.attribution import (
    FeatureTarget,
    LogitTarget,
    PromptCache,
    attribute,
    parse_target,
    target_label,
    target_string,
)
from tests.interp.test_edges import make_transcoders


@pytest.fixture(scope="module")
def tcs(tiny_model):
    return make_transcoders([0, 2], tiny_model.cfg.d_model, d_sae=16, seed=1)


def test_targets_round_trip_as_token_text(tiny_model):
    tok = tiny_model.tokenizer
    t = parse_target('logit:"a"-"b"@-2', tok)
    text = target_string(t, 10, tokenizer=tok)
    assert text == 'logit:"a"-"b"@8'
    assert parse_target(text, tok) == LogitTarget(t.token, t.other, 8)
    assert target_label(t, 8, tok) == 'logit "a" − "b"'
    # quotes and backslashes inside a token survive (JSON quoting)
    quote = parse_target('logit:"\\""', tok)
    assert target_string(quote, 3, tokenizer=tok) == 'logit:"\\""@2'
    assert target_string(t, 10) == f"logit:{t.token}-{t.other}@8"  # without a tokenizer: ids


def test_a_target_token_the_tokenizer_splits_is_a_clear_error(tiny_model):
    with pytest.raises(ValueError, match=r"\"ab\" is 2 tokens \['a', 'b'\], not one"):
        parse_target('logit:"ab"', tiny_model.tokenizer)


def test_a_prompt_longer_than_the_context_is_a_clear_error(tiny_model, tcs):
    n_ctx = tiny_model.cfg.n_ctx
    tokens = torch.ones(n_ctx + 1, dtype=torch.long)
    with pytest.raises(ValueError, match=f"{n_ctx + 1} tokens, longer than the model's context of {n_ctx}"):
        attribute(tiny_model, tokens, tcs, LogitTarget(3))


def test_a_feature_target_on_a_layer_without_a_transcoder_is_a_clear_error(tiny_model, tcs):
    pc = PromptCache(tiny_model, torch.tensor([1, 5, 6, 7]), tcs)
    with pytest.raises(ValueError, match=r"layer 1, which has no transcoder \(have \[0, 2\]\)"):
        attribute(tiny_model, pc.tokens, tcs, FeatureTarget(1, 3), cache=pc)
    with pytest.raises(ValueError, match="outside the prompt"):
        attribute(tiny_model, pc.tokens, tcs, LogitTarget(3, position=4), cache=pc)
