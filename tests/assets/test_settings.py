"""Where the atlas's model, device and layers come from: the `atlas_model` resource (read when a run starts) and the
`layer` dynamic partitions of the instance, never the environment at import."""

from __future__ import annotations

import os
import subprocess
import sys

import dagster as dg
import pytest

from assets import settings
from assets.resources import AtlasModel


def test_the_definitions_load_without_any_atlas_variable():
    env = {k: v for k, v in os.environ.items() if not k.startswith("ATLAS_")}
    code = (
        "import os, assets.definitions as d, assets.settings as s\n"
        "assert not [k for k in os.environ if k.startswith('ATLAS_')]\n"
        "assert isinstance(s.layer_partitions, __import__('dagster').DynamicPartitionsDefinition)\n"
        "print(sorted(k.to_user_string() for k in d.defs.resolve_asset_graph().get_all_asset_keys()))"
    )
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "'transcoders'" in out.stdout and "'attribution_graphs'" in out.stdout


def test_parse_layers(tiny_model_dir, atlas_home):
    assert settings.parse_layers("all", tiny_model_dir) == [0, 1, 2]
    assert settings.parse_layers(" 2, 0,2 ", tiny_model_dir) == [0, 2]
    with pytest.raises(ValueError, match="comma-separated integers"):
        settings.parse_layers("0-2", tiny_model_dir)
    with pytest.raises(ValueError, match="empty"):
        settings.parse_layers(",", tiny_model_dir)
    with pytest.raises(ValueError, match="has layers 0..2"):
        settings.parse_layers("1,3", tiny_model_dir)


def test_registered_layers_are_the_atlas_layers_in_ascending_order():
    with dg.DagsterInstance.ephemeral() as instance:
        with pytest.raises(LookupError, match="No layer partitions"):
            settings.atlas_layers(instance)
        settings.register_layers(instance, [2, 0])
        settings.register_layers(instance, [1, 0, 2])  # a layer added later still sits in order
        assert instance.get_dynamic_partitions("layer") == ["0", "1", "2"]
        settings.register_layers(instance, [1])
        assert settings.atlas_layers(instance) == [1]


def test_the_model_resource_reads_the_environment_when_used_and_loads_once(tiny_model_dir, monkeypatch):
    atlas = AtlasModel(device="cpu")
    monkeypatch.setenv("ATLAS_MODEL", tiny_model_dir)  # after the resource was made: read at use
    assert atlas.model_name == tiny_model_dir and atlas.torch_device == "cpu"
    assert AtlasModel(name="other", device="cpu").model_name == "other"
    monkeypatch.setenv("ATLAS_DEVICE", "cpu")
    assert AtlasModel().torch_device == "cpu"
    model = atlas.load()
    assert AtlasModel(name=tiny_model_dir, device="cpu").load() is model  # one model per process
    assert atlas.tokenizer().get_vocab() == model.tokenizer.get_vocab()
