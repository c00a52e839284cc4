"""Interventions on the tiny seeded model with hand-built transcoders: exactness of a no-op edit, ablation and clamp
against an independent hook, frozen attention, positions, generation, predicted vs actual, and bad input."""

from __future__ import annotations

import math

import pytest
import torch

from interp.interventions import (
    MAX_EDITS,
    Edit,
    InterventionError,
    format_edits,
    generate,
    logit_effects,
    parse_edits,
    run_with_edits,
)
from interp.transcoder import Transcoder, TranscoderConfig

D_SAE = 24


def _tc(layer: int, d_model: int = 32, arch: str = "relu") -> Transcoder:
    cfg = TranscoderConfig(
        d_in=d_model,
        d_sae=D_SAE,
        d_out=d_model,
        layer=layer,
        architecture=arch,
        k=6 if arch == "topk" else None,
        skip=False,
    )
    tc = Transcoder(cfg)
    tc.reset_parameters(torch.Generator().manual_seed(layer))
    with torch.no_grad():
        tc.b_enc.fill_(0.3)  # many features fire
        tc.W_dec.mul_(5)
    return tc.eval().requires_grad_(False)


@pytest.fixture(scope="module")
def setup(tiny_model):
    tcs = {0: _tc(0), 2: _tc(2, arch="topk")}
    tokens = tiny_model.to_tokens("the cat sat on a mat")[0]  # [pos], BOS first
    return tiny_model, tcs, tokens


def _x_and_y(model, tokens, layer):
    _, cache = model.run_with_cache(tokens[None])
    return cache[f"blocks.{layer}.ln2.hook_normalized"][0], cache[f"blocks.{layer}.hook_mlp_out"][0]


def _firing(tc, x):
    """(position >= 1, feature) of a feature that fires there."""
    z = tc.encode(x)
    z[0] = 0
    p, f = divmod(int(z.argmax()), z.shape[1])
    assert z[p, f] > 0
    return p, f, float(z[p, f])


@pytest.mark.parametrize("freeze", [False, True])
def test_an_edit_of_strength_zero_reproduces_the_model_exactly(setup, freeze):
    model, tcs, tokens = setup
    clean = model(tokens[None])[0]
    for edits in ([Edit(0, 3, "add", 0.0)], [Edit(2, 5, "scale", 1.0), Edit(0, 1, "add", 0.0, (2, 3))]):
        run = run_with_edits(model, tokens, tcs, edits, freeze_attention=freeze)
        assert torch.equal(run.logits, clean) and torch.equal(run.clean_logits, clean)
    plain = generate(model, tokens, tcs, [], 6)
    assert torch.equal(generate(model, tokens, tcs, [Edit(0, 3, "add", 0.0)], 6, freeze), plain)


def test_zeroing_a_firing_feature_changes_only_that_feature(setup):
    model, tcs, tokens = setup
    x, _ = _x_and_y(model, tokens, 0)
    p, f, z_pf = _firing(tcs[0], x)
    run = run_with_edits(model, tokens, tcs, [Edit(0, f, "zero")])
    z_clean = tcs[0].encode(x)
    others = [j for j in range(D_SAE) if j != f]
    assert torch.equal(run.features[0][1:, others], z_clean[1:, others])
    assert (run.features[0][1:, f] == 0).all()
    # independent: a hook removing z_f f_dec,f from the MLP output at positions 1..
    delta = z_clean[:, f, None] * tcs[0].W_dec[f]  # [pos, d_model]
    delta[0] = 0

    def remove(y, hook):
        return y - delta

    expected = model.run_with_hooks(tokens[None], fwd_hooks=[("blocks.0.hook_mlp_out", remove)])[0]
    torch.testing.assert_close(run.logits, expected, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(run.logits, run.clean_logits)


def test_set_clamps_at_the_named_positions_only(setup):
    model, tcs, tokens = setup
    x, _ = _x_and_y(model, tokens, 0)
    z = tcs[0].encode(x)
    run = run_with_edits(model, tokens, tcs, [Edit(0, 7, "set", 4.0, (3,))])
    assert run.features[0][3, 7] == 4.0
    assert torch.equal(run.features[0][[1, 2, 4], 7], z[[1, 2, 4], 7])
    assert torch.equal(run.logits[:3], run.clean_logits[:3])  # causal: nothing before position 3 moves
    assert not torch.allclose(run.logits[3], run.clean_logits[3])


def test_topk_edit_at_a_later_layer_sees_the_edited_input(setup):
    """The layer-2 edit reads x from the run edited at layer 0; its other features are that run's encoding."""
    model, tcs, tokens = setup
    edits = [Edit(0, 2, "add", 3.0), Edit(2, 4, "scale", 2.0)]
    run = run_with_edits(model, tokens, tcs, edits)
    store = {}
    from interp.interventions import edited

    with edited(model, tcs, edits[:1]):
        model.run_with_hooks(
            tokens[None],
            fwd_hooks=[
                ("blocks.2.ln2.hook_normalized", lambda a, hook: store.__setitem__("x", a[0].clone()))
            ],
        )
    z = tcs[2].encode(store["x"])
    others = [j for j in range(D_SAE) if j != 4]
    torch.testing.assert_close(run.features[2][1:, others], z[1:, others])
    torch.testing.assert_close(run.features[2][1:, 4], 2 * z[1:, 4])


def test_frozen_attention_keeps_the_clean_patterns(setup):
    model, tcs, tokens = setup
    from interp.interventions import edited, pattern_hooks

    edits = [Edit(0, 2, "add", 5.0)]
    _, cache = model.run_with_cache(tokens[None], names_filter=lambda n: n in set(pattern_hooks(model)))
    frozen = {n: cache[n] for n in pattern_hooks(model)}
    seen = {}

    def grab(a, hook):
        seen["p"] = a.clone()

    for patterns, same in ((frozen, True), (None, False)):
        with edited(model, tcs, edits, patterns):
            model.run_with_hooks(tokens[None], fwd_hooks=[("blocks.2.attn.hook_pattern", grab)])
        assert torch.equal(seen["p"], cache["blocks.2.attn.hook_pattern"]) == same
    live = run_with_edits(model, tokens, tcs, edits).logits
    held = run_with_edits(model, tokens, tcs, edits, freeze_attention=True).logits
    assert not torch.allclose(live, held)


@pytest.mark.parametrize("freeze", [False, True])
def test_generation_holds_the_edits_at_every_new_position(setup, freeze):
    model, tcs, tokens = setup
    edits = [Edit(0, 2, "add", 6.0), Edit(2, 1, "set", 3.0)]
    new = generate(model, tokens, tcs, edits, 8, freeze_attention=freeze)
    assert len(new) == 8
    full = torch.cat([tokens, new])
    if (
        freeze
    ):  # each step freezes the patterns of the unedited run on that step's sequence: check step by step
        for k in range(len(new)):
            seq = full[: len(tokens) + k]
            assert int(run_with_edits(model, seq, tcs, edits, True).logits[-1].argmax()) == int(new[k])
        return
    # without a KV cache every step re-runs the whole sequence, so one edited pass over it predicts every step
    logits = run_with_edits(model, full[:-1], tcs, edits).logits
    assert logits[len(tokens) - 1 :].argmax(-1).tolist() == new.tolist()
    assert not torch.equal(new, generate(model, tokens, tcs, [], 8))


def test_predicted_change_is_the_direct_effect_and_actual_the_real_change(setup):
    model, tcs, tokens = setup
    token = 7
    e_last = Edit(2, 4, "add", 0.5, (len(tokens) - 1,))
    e_mid = Edit(0, 2, "set", 2.0, (2, 3))
    effects = logit_effects(model, tokens, tcs, [e_last, e_mid], token)
    assert [e.edit for e in effects] == [e_last, e_mid, None]
    # a last-layer edit at the read position reaches the logit only through the final norm (frozen): by hand
    _, cache = model.run_with_cache(tokens[None])
    inv_rms = 1 / cache["ln_final.hook_scale"][0, -1, 0]
    by_hand = 0.5 * float(tcs[2].W_dec[4] @ model.W_U[:, token] * inv_rms)
    assert effects[0].predicted == pytest.approx(by_hand, rel=1e-4)
    assert effects[2].predicted == pytest.approx(
        effects[0].predicted + effects[1].predicted, rel=1e-4, abs=1e-6
    )
    for e in effects:
        edits = [e.edit] if e.edit else [e_last, e_mid]
        run = run_with_edits(model, tokens, tcs, edits)
        assert e.actual == pytest.approx(float(run.logits[-1, token] - run.clean_logits[-1, token]), abs=1e-5)
    assert effects[0].actual != 0 and math.copysign(1, effects[0].actual) == math.copysign(1, by_hand)


def test_edits_round_trip_through_their_text_form():
    edits = [Edit(12, 345, "add", 8.0), Edit(3, 7, "zero", 0.0, (2, 5)), Edit(1, 0, "set", -1.5)]
    text = format_edits(edits)
    assert text == "L12:345:add:8,L3:7:zero@2_5,L1:0:set:-1.5"
    assert parse_edits(text) == edits
    assert parse_edits("L1:0:scale:2@all") == [Edit(1, 0, "scale", 2.0)]
    assert parse_edits("") == []


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("L1:3", "is not 'L<layer>:<feature>:<op>"),
        ("L1:3:boost:2", "unknown op 'boost'"),
        ("L1:3:add", "add needs a value"),
        ("L1:3:add:lots", "is not a number"),
        (",".join(["L0:1:zero"] * (MAX_EDITS + 1)), f"at most {MAX_EDITS} edits"),
    ],
)
def test_malformed_edit_text_gets_a_clear_message(text, message):
    with pytest.raises(InterventionError, match=message.replace("(", r"\(")):
        parse_edits(text)


@pytest.mark.parametrize(
    ("edits", "message"),
    [
        (
            [Edit(0, D_SAE, "add", 1.0)],
            f"feature {D_SAE} does not exist; layer 0's transcoder has features 0..{D_SAE - 1}",
        ),
        ([Edit(0, -1, "add", 1.0)], "feature -1 does not exist"),
        ([Edit(7, 0, "add", 1.0)], "layer 7 does not exist; the model has layers 0..2"),
        ([Edit(1, 0, "add", 1.0)], "layer 1 has no transcoder \\(layers with one: 0, 2\\)"),
        ([Edit(0, 0, "add", float("nan"))], "not a finite number"),
        ([Edit(0, 0, "set", float("inf"))], "not a finite number"),
        ([Edit(0, 0, "scale", 1e9)], "too large"),
        ([Edit(0, 0, "add", 1.0, (0,))], "0 is BOS, never edited"),
        ([Edit(0, 0, "add", 1.0, (99,))], "position 99 cannot be edited"),
        ([Edit(0, 0, "add", 1.0)] * (MAX_EDITS + 1), f"at most {MAX_EDITS} edits"),
    ],
)
def test_bad_edits_get_a_clear_message(setup, edits, message):
    model, tcs, tokens = setup
    for call in (
        lambda: run_with_edits(model, tokens, tcs, edits),
        lambda: generate(model, tokens, tcs, edits, 2),
        lambda: logit_effects(model, tokens, tcs, edits, 3),
    ):
        with pytest.raises(InterventionError, match=message):
            call()


# ---- the real SmolLM2 model ----------------------------------------------------------------------------------

REAL_LAYERS = [24, 28]
SHARE = 0.1  # ||a f_dec|| / median ||resid|| at the layer  # above the middle of its 30 layers
NEUTRAL_PROMPTS = [
    "The weather today is",
    "I went to the",
    "She said that",
    "In the morning, we",
    "My favorite thing is",
    "He looked at the",
    "This is a story about",
    "They decided to",
    "It was a long",
    "We need to talk about",
]


@pytest.fixture(scope="module")
def real(real_data):
    """SmolLM2 with quick TopK transcoders at two upper layers, trained on ~2k tokens of its own activations (their
    quality does not matter here: an edit acts on whatever transcoder is spliced in)."""
    import glob
    import os

    from interp.activations import harvest
    from interp.model import load_model
    from interp.train import TrainConfig, train

    model = load_model("smollm2-135m", device="cpu", cache_dir=real_data["models"])
    tok = model.tokenizer
    corpus = os.path.join(real_data["corpora"], "sotu", "*.txt")
    text = " ".join(open(f).read() for f in sorted(glob.glob(corpus))[:3])
    ids = tok(text, add_special_tokens=False)["input_ids"][: 32 * 63]
    ctx = torch.tensor(ids).reshape(-1, 63)
    ctx = torch.cat([torch.full((ctx.shape[0], 1), tok.bos_token_id), ctx], 1)  # [32, 64]
    acts = {layer: ([], []) for layer in REAL_LAYERS}
    for batch in harvest(model, ctx, torch.arange(len(ctx)), REAL_LAYERS, batch_size=16):
        for layer in REAL_LAYERS:
            acts[layer][0].append(batch.acts[layer][0])
            acts[layer][1].append(batch.acts[layer][1])
    tcs, fired = {}, {}
    for layer in REAL_LAYERS:
        x, y = torch.cat(acts[layer][0]), torch.cat(acts[layer][1])
        cfg = TrainConfig(batch_size=512, train_tokens=15_000, buffer_tokens=4096, checkpoint_every=0)
        tc_cfg = TranscoderConfig(d_in=576, d_sae=1152, d_out=576, k=16, skip=False, layer=layer)
        tc = train(lambda x=x, y=y: [{"x": x, "y": y}], cfg, tc_cfg, progress=False).transcoder
        tcs[layer] = tc.eval().requires_grad_(False)
        with torch.no_grad():
            fired[layer] = (tcs[layer].encode(x) > 0).sum(0)  # [d_sae]
    resid = {}
    with torch.no_grad():
        _, cache = model.run_with_cache(ctx[:4], names_filter=lambda n: n.endswith("hook_resid_mid"))
    for layer in REAL_LAYERS:
        resid[layer] = float(cache[f"blocks.{layer}.hook_resid_mid"][:, 1:].norm(dim=-1).median())
    return model, tcs, fired, resid


def _strongest_promoters(model, tcs, fired, n_per_layer: int) -> list[tuple[int, int, int]]:
    """(layer, feature, token): per layer the features that fired in training whose strongest promoted token
    (feature_tokens 'logit_top' rank 0, interp.token_effects) has the largest logit effect, distinct tokens that
    are not control tokens."""
    from interp.token_effects import logit_effects

    chosen, seen = [], set()
    tok = (
        model.tokenizer
    )  # control tokens (SmolLM2's <filename>, <jupyter_code>, ...) never follow neutral prose
    special = set(tok.all_special_ids) | set(getattr(tok, "added_tokens_decoder", {}))
    for layer, tc in tcs.items():
        top, _ = logit_effects(tc.W_dec, model.W_U, 1)
        value = top.value[:, 0].masked_fill(fired[layer] < 5, float("-inf"))
        picked = 0
        for f in value.argsort(descending=True).tolist():
            token = int(top.token_id[f, 0])
            if token not in seen and token not in special:
                seen.add(token)
                chosen.append((layer, f, token))
                picked += 1
            if picked == n_per_layer:
                break
    return chosen


@pytest.mark.slow
def test_real_adding_a_decoder_direction_raises_its_top_promoted_token(real):
    """10 features (5 at each of two upper layers), each added at all positions with ||a f_dec|| a fixed share of
    the median residual norm at its layer: its strongest promoted token gets more probable on >= 8 of 10 neutral
    prompts (cut to the shortest one's token count, so they run as one batch; the edit hooks are batch-agnostic)."""
    from interp.interventions import edited

    model, tcs, fired, resid = real
    features = _strongest_promoters(model, tcs, fired, 5)
    assert len(features) == 10
    tokens = [model.to_tokens(p)[0] for p in NEUTRAL_PROMPTS]
    n = min(len(t) for t in tokens)
    batches = [torch.stack([t[:n] for t in tokens])]  # [10, n]: each prompt's first n tokens, one batch
    with torch.no_grad():
        clean = torch.cat([model(b)[:, -1].softmax(-1) for b in batches])  # [10, d_vocab]
    wins = []
    for layer, f, token in features:
        a = SHARE * resid[layer] / float(tcs[layer].W_dec[f].norm())
        with torch.no_grad(), edited(model, tcs, [Edit(layer, f, "add", a)]):
            steered = torch.cat([model(b)[:, -1].softmax(-1) for b in batches])
        wins.append(int((steered[:, token] > clean[:, token]).sum()))
    print(f"\nprompts (of 10) on which each feature's top promoted token got more probable: {wins}")
    assert all(w >= 8 for w in wins), list(zip(features, wins))


@pytest.mark.slow
def test_real_zeroing_a_firing_feature_leaves_the_other_features_of_its_layer_unchanged(real):
    model, tcs, _, _ = real
    layer = REAL_LAYERS[-1]
    tokens = model.to_tokens("When Mary and John went to the store, John gave a drink to")[0]
    x, _ = _x_and_y(model, tokens, layer)
    p, f, _ = _firing(tcs[layer], x)
    run = run_with_edits(model, tokens, tcs, [Edit(layer, f, "zero")])
    z_clean = tcs[layer].encode(x)
    others = [j for j in range(tcs[layer].d_sae) if j != f]
    assert torch.equal(run.features[layer][1:, others], z_clean[1:, others])
    assert (run.features[layer][1:, f] == 0).all() and z_clean[p, f] > 0
    delta = z_clean[:, f, None] * tcs[layer].W_dec[f]  # [pos, d_model]: the feature's whole contribution
    delta[0] = 0
    expected = model.run_with_hooks(
        tokens[None], fwd_hooks=[(f"blocks.{layer}.hook_mlp_out", lambda y, hook: y - delta)]
    )[0]
    torch.testing.assert_close(run.logits, expected, atol=1e-4, rtol=1e-4)
    assert not torch.allclose(run.logits, run.clean_logits)


@pytest.mark.slow
def test_real_an_edit_of_strength_zero_reproduces_the_unedited_logits_exactly(real):
    model, tcs, _, _ = real
    tokens = model.to_tokens("The President said that the nation")[0]
    with torch.no_grad():
        clean = model(tokens[None])[0]
    edits = [Edit(REAL_LAYERS[0], 11, "add", 0.0), Edit(REAL_LAYERS[1], 5, "scale", 1.0)]
    for freeze in (False, True):
        assert torch.equal(run_with_edits(model, tokens, tcs, edits, freeze_attention=freeze).logits, clean)
