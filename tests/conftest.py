"""Shared fixtures: a tiny seeded Llama-architecture model (same code path as SmolLM2), a private ATLAS_HOME,
the socket guard every test runs under, and the real-model data of `make data`."""

from __future__ import annotations

import os
import socket

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

TINY_CHARS = list("abcdefghijklmnopqrstuvwxyz .,'!?\n<>/()=;:-\"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ")


def make_tiny_checkpoint(
    path: str, n_layers: int = 3, d_model: int = 32, seed: int = 0, arch: str = "llama"
) -> str:
    """Write a random model with a character tokenizer to `path`. arch 'llama': RMSNorm, SwiGLU, GQA, tied
    embeddings (SmolLM2's code path); 'gpt2': LayerNorm, biases, learned positions; 'neox': Pythia's parallel
    attention and MLP blocks with rotary embeddings."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import (
        GPT2Config,
        GPT2LMHeadModel,
        GPTNeoXConfig,
        GPTNeoXForCausalLM,
        LlamaConfig,
        LlamaForCausalLM,
        PreTrainedTokenizerFast,
    )

    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, **{c: i + 3 for i, c in enumerate(TINY_CHARS)}}
    tk = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.Split("", "isolated")
    tok = PreTrainedTokenizerFast(
        tokenizer_object=tk, bos_token="<s>", eos_token="</s>", unk_token="<unk>", pad_token="</s>"
    )
    torch.manual_seed(seed)
    common = dict(vocab_size=len(vocab), bos_token_id=1, eos_token_id=2, pad_token_id=2)
    if arch == "llama":
        cfg = LlamaConfig(
            hidden_size=d_model,
            intermediate_size=2 * d_model,
            num_hidden_layers=n_layers,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=256,
            tie_word_embeddings=True,
            **common,
        )
        model = LlamaForCausalLM(cfg)
    elif arch == "gpt2":
        model = GPT2LMHeadModel(
            GPT2Config(n_embd=d_model, n_layer=n_layers, n_head=4, n_positions=256, **common)
        )
    elif arch == "neox":
        cfg = GPTNeoXConfig(
            hidden_size=d_model,
            intermediate_size=2 * d_model,
            num_hidden_layers=n_layers,
            num_attention_heads=4,
            max_position_embeddings=256,
            use_parallel_residual=True,
            **common,
        )
        model = GPTNeoXForCausalLM(cfg)
    else:
        raise ValueError(f"unknown arch {arch!r}")
    with (
        torch.no_grad()
    ):  # Hugging Face initializes biases to zero: make them count, so bias terms are checked
        for name, p in model.named_parameters():
            if name.endswith("bias"):
                p.normal_(0, 0.1)
    model.eval().save_pretrained(path)
    tok.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> str:
    return make_tiny_checkpoint(str(tmp_path_factory.mktemp("tiny_llama")))


@pytest.fixture(scope="session")
def tiny_model(tiny_model_dir):
    from interp.model import load_model

    return load_model(tiny_model_dir, device="cpu")


@pytest.fixture
def atlas_home(tmp_path, monkeypatch) -> str:
    home = tmp_path / "atlas"
    home.mkdir()
    monkeypatch.setenv("ATLAS_HOME", str(home))
    monkeypatch.setenv("ATLAS_DB_LOCK_TIMEOUT", "20")
    return str(home)


@pytest.fixture
def tiny_atlas(atlas_home, tiny_model_dir, monkeypatch) -> str:
    """A private ATLAS_HOME whose atlas model is the tiny checkpoint, with a small text corpus."""
    monkeypatch.setenv("ATLAS_MODEL", tiny_model_dir)
    corpora = os.path.join(atlas_home, "corpora", "toy")
    os.makedirs(corpora)
    words = "the cat sat on the mat. a dog ran in the park, and the bird sang! ".split()
    rng = __import__("random").Random(0)
    for i in range(24):
        with open(os.path.join(corpora, f"doc{i:02d}.txt"), "w") as f:
            f.write(" ".join(rng.choice(words) for _ in range(400)))
    return atlas_home


@pytest.fixture(autouse=True)
def no_network(monkeypatch) -> list:
    """In every test, any attempt of this process to open a non-local socket fails loudly; the attempts are
    returned for assertions. (Servers and browsers a test starts are subprocesses: they serve 127.0.0.1 only.)"""
    attempts: list = []
    real_connect = socket.socket.connect

    def guarded(self, address):
        host = address[0] if isinstance(address, tuple) else address
        if (
            isinstance(host, str)
            and host not in ("127.0.0.1", "localhost", "::1")
            and not host.startswith(("/", "\0"))  # Unix sockets: a path, or an abstract name
        ):
            attempts.append(address)
            raise OSError(f"network blocked in tests: {address}")
        return real_connect(self, address)

    monkeypatch.setattr(socket.socket, "connect", guarded)
    return attempts


# `make test-deps`: circuit-tracer 0.5.0 with its pinned dependencies, and the registry packages its viewer page loads
CT_VENV = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), ".venv-ct")


@pytest.fixture(scope="session")
def ct_python() -> str:
    """Python of the virtual environment holding circuit-tracer; fails, naming the command, where it is missing."""
    python = os.path.join(CT_VENV, "bin", "python")
    if not os.path.exists(python):
        pytest.fail(f"{python} is missing: run `make test-deps` (`make test` does).")
    return python


@pytest.fixture(scope="session")
def real_data() -> dict[str, str]:
    """The model cache and corpora of the ATLAS_HOME this session started with (`make data` fills them; `make
    test` runs it), read before any test points ATLAS_HOME at a private folder: {'models': ..., 'corpora': ...}.
    Fails, naming the command, where the converted embedded model is missing."""
    from interp.model import DEFAULT_MODEL
    from storage import layout

    # absolute: tests link to them from private folders, and ATLAS_HOME may be relative outside `make`
    dirs = {"models": os.path.abspath(layout.models_dir()), "corpora": os.path.abspath(layout.corpora_dir())}
    for need in (os.path.join(dirs["models"], DEFAULT_MODEL, "config.json"), dirs["corpora"]):
        if not os.path.exists(need):
            pytest.fail(
                f"{need} is missing: run `make data` (`make test` does) or point ATLAS_HOME at its output"
            )
    return dirs
