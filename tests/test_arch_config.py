"""Each architecture's own config class, behind the registry (core/model.py, config.py).

- every registered architecture has a config class, `ModelConfig` plus its own fields, whose
  `arch` is the record's name; the base alone is not a config;
- `Config.model` is the class of model.arch: to_dict / from_dict round-trips each architecture,
  class included, and so does `saved_model_config`;
- a field of another architecture is refused in one line that names the architecture that has
  it and the fix (--model.arch=...), from the command line, a config file and Python alike;
- --model.arch is applied first wherever it stands, so the flags' order does not matter;
- a config written when one class held every architecture's fields (a llama's config.json,
  model.json and checkpoint meta with n_experts=0, top_k=2, ...) still loads everywhere: resume,
  eval/generate (load_model), --config RUN_DIR, compare's fingerprints; such a field set away from
  its default is refused in one line.

Run: .venv/bin/pytest tests/test_arch_config.py
"""

import dataclasses
import json
import shutil

import pytest

from superpose import checkpoint, cli
from superpose.config import Config
from superpose.core.arch import ModelConfig
from superpose.core.llama import LlamaConfig
from superpose.core.model import ARCHITECTURES, model_config, saved_model_config
from superpose.core.qwen3_moe import Qwen3MoeConfig
from superpose.experiments.fingerprint import changed_fields
from superpose.files import file_record
from superpose.inference.load import load_model
from superpose.overrides import set_fields
from superpose.presets import resolve
from superpose.training.resume import resume_config
from conftest import raises_one_line

pytestmark = pytest.mark.usefixtures("one_thread")

# What a llama's model section held after `arch` before each architecture had its own class:
# every qwen3_moe field at its default, as superpose wrote them.
OLD_MOE_DEFAULTS = {"n_experts": 0, "top_k": 2, "moe_ffn_dim": 0, "norm_topk_prob": True, "router_aux_coef": 0.001,
                    "decoder_sparse_step": 1, "mlp_only_layers": []}
MOE_FLAGS = ["--model.n_experts=8", "--model.arch=qwen3_moe", "--model.moe_ffn_dim=32"]



def test_each_architecture_has_its_own_config_class():
    for name, arch in ARCHITECTURES.items():
        assert issubclass(arch.config, ModelConfig) and arch.config().arch == name
        assert type(model_config(name)) is arch.config
    common = {f.name for f in dataclasses.fields(ModelConfig)}
    assert {f.name for f in dataclasses.fields(LlamaConfig)} == common  # nothing beyond the common fields
    assert "n_experts" in {f.name for f in dataclasses.fields(Qwen3MoeConfig)} - common
    with pytest.raises(TypeError, match="LlamaConfig"):
        ModelConfig(dim=64)  # the base is no architecture
    with pytest.raises(TypeError):
        LlamaConfig(arch="qwen3_moe")  # the class fixes the architecture


@pytest.mark.parametrize("arch,fields", [("llama", dict(dim=64, n_heads=2)),
                                         ("qwen3_moe", dict(dim=64, n_heads=2, n_experts=4, moe_ffn_dim=32,
                                                            mlp_only_layers=[1], norm_topk_prob=False))])
def test_to_dict_from_dict_round_trips_each_architecture(arch, fields):
    cfg = Config(model=model_config(arch, **fields)).validate()
    back = Config.from_dict(json.loads(json.dumps(cfg.to_dict())))
    assert back == cfg and type(back.model) is ARCHITECTURES[arch].config
    assert saved_model_config(cfg.model.to_dict()) == cfg.model
    assert ("n_experts" in cfg.to_dict()["model"]) == (arch == "qwen3_moe")


@pytest.mark.parametrize("flags", [["--model.n_experts=8"], ["--model.arch=llama", "--model.top_k=4"],
                                   ["--model.mlp_only_layers=0"]])
def test_another_architectures_field_is_refused_in_one_line(flags):
    name = flags[-1].split("=")[0].removeprefix("--model.")
    raises_one_line(lambda: resolve("cpu-smoke", flags), f"model.{name}: only for model.arch=qwen3_moe",
             "this model is llama", "--model.arch=qwen3_moe")
    with pytest.raises(ValueError, match="only for model.arch=qwen3_moe"):
        model_config("llama", **{name: 4})


def test_another_architectures_field_in_a_config_file_is_named(tmp_path):
    path = tmp_path / "moe.toml"
    path.write_text("[model]\nn_experts = 8\ndimm = 3\n")
    raises_one_line(lambda: resolve("cpu-smoke", [], path), "unknown keys: model.n_experts: only for model.arch=qwen3_moe",
             "model.dimm")
    path.write_text('[model]\nn_experts = 8\nmoe_ffn_dim = 32\narch = "qwen3_moe"\n')  # arch last: still applied first
    assert type(resolve("cpu-smoke", [], path).model) is Qwen3MoeConfig


def test_the_arch_flag_is_applied_first_wherever_it_stands(capsys):
    orders = [MOE_FLAGS, MOE_FLAGS[::-1], MOE_FLAGS[1:] + MOE_FLAGS[:1]]
    configs = [resolve("cpu-smoke", flags) for flags in orders]
    assert all(c == configs[0] for c in configs) and type(configs[0].model) is Qwen3MoeConfig
    assert (configs[0].model.n_experts, configs[0].model.dim) == (8, 64)  # the preset's common fields kept
    printed = []
    for flags in orders[:2]:
        assert cli.main(["train", "--preset", "cpu-smoke", "--print-config", *flags]) == 0
        printed.append(json.loads(capsys.readouterr().out))
    assert printed[0] == printed[1] and printed[0]["model"]["arch"] == "qwen3_moe"
    # The other way: a qwen3_moe preset as a llama leaves its MoE fields behind.
    dense = resolve("cpu-moe", ["--model.arch=llama"])
    assert type(dense.model) is LlamaConfig and dense.model.dim == 64
    assert set_fields(Config(), [("model.n_experts", 2), ("model.arch", "qwen3_moe")]).model.n_experts == 2


def old_format(config: dict, **moe) -> dict:
    """`config` (a to_dict) as superpose wrote a llama's before each architecture had a class."""
    return {**config, "model": {**config["model"], **OLD_MOE_DEFAULTS, **moe}}


def test_an_old_format_config_loads_everywhere(checkpointed_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(checkpointed_run, run)
    cfg = Config.from_dict(json.loads((run / "config.json").read_text()))
    old = old_format(cfg.to_dict())
    # Rewrite the run's config.json, model.json and newest checkpoint meta as an older superpose did,
    # each with its checksum, so what is tested is the reading, not the damage checks.
    (run / "config.json").write_text(json.dumps(old, indent=2) + "\n")
    (run / "model.json").write_text(json.dumps(old["model"], indent=2) + "\n")
    summary = json.loads((run / "summary.json").read_text())
    summary["files"].update({n: file_record(run / n) for n in ("config.json", "model.json")})
    (run / "summary.json").write_text(json.dumps(summary))
    newest = checkpoint.newest(run)
    meta = json.loads((newest / "meta.json").read_text())
    meta["config"] = old
    meta["checksum"] = checkpoint.meta_checksum(meta)
    (newest / "meta.json").write_text(json.dumps(meta))

    assert Config.from_dict(old) == cfg and not hasattr(Config.from_dict(old).model, "n_experts")
    assert resume_config(run) == cfg  # resume
    assert load_model(run).config == cfg.model and load_model(newest).config == cfg.model  # eval, generate, export
    assert resolve(None, [], run) == cfg  # --config RUN_DIR
    assert changed_fields(old, cfg) == []  # compare's and sweep's fingerprints
    assert saved_model_config(old["model"]) == cfg.model  # model.json, torchtitan's plan


def test_an_old_format_field_away_from_its_default_is_refused(checkpointed_run):
    cfg = Config.from_dict(json.loads((checkpointed_run / "config.json").read_text()))
    bad = old_format(cfg.to_dict(), n_experts=8)
    raises_one_line(lambda: Config.from_dict(bad), "model.n_experts: only for model.arch=qwen3_moe", "--model.arch=qwen3_moe")
    with pytest.raises(ValueError, match="model.n_experts: only for model.arch=qwen3_moe"):
        saved_model_config(bad["model"])
    # As a qwen3_moe config the same fields are its own.
    moe = Config.from_dict({**bad, "model": {**bad["model"], "arch": "qwen3_moe", "moe_ffn_dim": 16}})
    assert type(moe.model) is Qwen3MoeConfig and moe.model.n_experts == 8
