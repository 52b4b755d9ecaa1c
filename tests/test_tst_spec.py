"""The three TST front-ends compute one loss: superpose's own trainer (`tst_step.model_loss`), the
Hugging Face `superposition_loss` and torchtitan's `TSTTrainer` step give the same loss and the
same gradients on the same batch and weights, in phase 1 and phase 2, for the default spec and
for weighted MCEAlt; and the comparison fails when one front-end weighs the bag differently.
Also: `TSTSpec` is the one set of settings, defaults and checks every front-end reads.

Skipped without transformers or torchtitan.
    OMP_NUM_THREADS=1 .venv/bin/python -m pytest -q -n 0 tests/test_tst_spec.py
"""

from __future__ import annotations

import dataclasses

import pytest

pytest.importorskip("transformers")
pytest.importorskip("torchtitan", reason="torchtitan is not installed (pip install -e '.[titan]')")

import torch  # noqa: E402
import transformers  # noqa: E402

from superpose.config import Config  # noqa: E402
from superpose.core.model import build_model  # noqa: E402
from superpose.core.schedule import Phase  # noqa: E402
from superpose.core.superposition import count_valid_targets  # noqa: E402
from superpose.core.tst_spec import TSTSpec  # noqa: E402
from superpose.core.tst_step import model_loss, phase_targets, phase_weights  # noqa: E402
from superpose.errors import UserError  # noqa: E402
from superpose.interop.hf_llama import hf_config, hf_state, to_hf_name  # noqa: E402
from superpose.interop.hf_trainer import superposition_loss  # noqa: E402
from superpose.titan import loss as titan_loss  # noqa: E402
from superpose.titan.trainer import TSTTrainer as TitanTrainer  # noqa: E402

from test_titan import VOCAB, full, single_process, tiny_config  # noqa: E402,F401  (single_process: a fixture used here)

S, L, B = 4, 16, 2
SPECS = {"default": TSTSpec(bag_size=S, ratio=0.5), "power-mce_alt": TSTSpec(bag_size=S, ratio=0.5, weights="power",
                                                                            loss="mce_alt")}


def titan_trainer(data, out, spec: TSTSpec) -> TitanTrainer:
    """torchtitan's TSTTrainer on superpose's tiny model: step 1 is phase 1, step 2 phase 2."""
    cfg = tiny_config(data, out, steps=2, ratio=0.5, bag=S)
    cfg.tst = dataclasses.replace(spec)
    cfg.checkpoint.enable = False
    cfg.__post_init__()  # the loss reads its weights and kind from the tst section
    return cfg.build()


def plain_titan(trainer: TitanTrainer) -> torch.nn.Module:
    """A plain (unsharded, unwrapped) copy of the trainer's model architecture: its state_dict
    hooks turn the checkpoint layout (wq, wk, wv) into its fused parameters (wqkv) and back."""
    with torch.device("meta"):
        model = trainer.config.model_spec.model.build()
    model.to_empty(device="cpu")
    with torch.no_grad():
        model.init_weights(buffer_device=None)
    return model


def titan_params(trainer: TitanTrainer) -> dict[str, torch.nn.Parameter]:
    """The trainer's parameters by the plain model's names (activation checkpointing wraps each layer)."""
    return {k.replace("_checkpoint_wrapped_module.", ""): p for k, p in trainer.model_parts[0].named_parameters()}


def copy_into_titan(trainer: TitanTrainer, plain: torch.nn.Module, hf_sd: dict[str, torch.Tensor]) -> None:
    """The HF model's weights into torchtitan's model (its own name map and layouts)."""
    from superpose.core.tst_step import copy_full_

    spec = trainer.config.model_spec
    plain.load_state_dict(spec.state_dict_adapter(spec.model, None).from_hf(hf_sd))
    params = titan_params(trainer)
    assert set(params) == set(dict(plain.named_parameters()))
    for name, p in plain.named_parameters():
        copy_full_(params[name], p.detach())


def titan_grads_as_hf(trainer: TitanTrainer, plain: torch.nn.Module) -> dict[str, torch.Tensor]:
    """torchtitan's gradients under HF names: each gradient set as the plain model's parameter,
    read back through its state_dict and the adapter's name map."""
    grads = titan_params(trainer)
    with torch.no_grad():
        for name, p in plain.named_parameters():
            p.copy_(full(grads[name].grad))
        sd = {k: v.clone() for k, v in plain.state_dict().items()}
    spec = trainer.config.model_spec
    return spec.state_dict_adapter(spec.model, None).to_hf(sd)


def native(model, rows: torch.Tensor, phase: Phase, spec: TSTSpec) -> tuple[float, dict]:
    """superpose's trainer: model_loss / the batch's count; gradients under HF names."""
    model.zero_grad()
    weights, kind = phase_weights(spec.weights, phase.target_bag), spec.phase_loss(phase)
    n = count_valid_targets(phase_targets(rows, phase), weights, loss=kind)
    loss = model_loss(model, rows, phase, weights, kind) / n
    loss.backward()
    return float(loss.detach()), {to_hf_name(k): p.grad.clone() for k, p in model.named_parameters()}


def hugging_face(model, rows: torch.Tensor, phase: Phase, spec: TSTSpec) -> tuple[float, dict]:
    """The HF front-end: superposition_loss(reduction="sum") / the batch's count."""
    model.zero_grad()
    weights, kind = phase_weights(spec.weights, phase.target_bag), spec.phase_loss(phase)
    n = count_valid_targets(phase_targets(rows, phase), weights, loss=kind)
    loss = superposition_loss(model, rows, phase.bag_size, weights, reduction="sum", mode=phase.mode, loss=kind) / n
    loss.backward()
    return float(loss.detach()), {k: p.grad.clone() for k, p in model.named_parameters()}


def titan(trainer: TitanTrainer, plain: torch.nn.Module, rows: torch.Tensor, step: int) -> tuple[float, dict]:
    """torchtitan's own step (forward hook, chunked multi-hot loss, its count) on the same rows."""
    model = trainer.model_parts[0]
    model.zero_grad()
    trainer.step = step
    phase = trainer.phase()
    labels = rows[:, 1:]
    if phase.bag_size > 1:
        labels = phase_targets(rows, phase)  # as tst_batch makes them
    targets = labels if labels.dim() == 3 else labels.unsqueeze(-1)
    count = count_valid_targets(targets, trainer._weights(phase), loss=trainer._loss_kind(phase))
    trainer._count = (step, count)  # what batch_generator sums for the step
    loss = trainer.forward_backward_step(input_dict={"input": rows[:, :-1]}, labels=labels, global_valid_tokens=count)
    return float(full(loss)), titan_grads_as_hf(trainer, plain)


def same(a: tuple[float, dict], b: tuple[float, dict]) -> bool:
    """Equal losses and gradients up to float32 summation order (chunked head, fused lookups)."""
    if abs(a[0] - b[0]) > 1e-5 * max(1.0, abs(a[0])):
        return False
    return a[1].keys() == b[1].keys() and all(torch.allclose(a[1][k], b[1][k], rtol=1e-4, atol=1e-6) for k in a[1])


@pytest.mark.usefixtures("single_process")
@pytest.mark.parametrize("name", list(SPECS))
def test_the_three_front_ends_give_one_loss_and_gradient(name, tiny_data, tmp_path, monkeypatch):
    spec = SPECS[name]
    torch.manual_seed(0)
    cfg = tiny_config(tiny_data, tmp_path / "cfg").model_spec.superpose_model
    ours = build_model(dataclasses.replace(cfg))
    hf = transformers.LlamaForCausalLM(transformers.LlamaConfig(**hf_config(cfg, eot_id=0, dtype="float32")))
    missing, unexpected = hf.load_state_dict(hf_state(ours), strict=False)
    assert not unexpected and all("rotary" in k for k in missing)
    trainer = titan_trainer(tiny_data, tmp_path / "titan", spec)
    try:
        plain = plain_titan(trainer)
        copy_into_titan(trainer, plain, {k: v.detach().clone() for k, v in hf.named_parameters()})
        gen = torch.Generator().manual_seed(1)
        for step, phase in ((1, spec.phases(2)[0]), (2, spec.phases(2)[1])):
            rows = torch.randint(0, VOCAB, (B, phase.row_tokens(L) + 1), generator=gen)
            mine = native(ours, rows, phase, spec)
            theirs = hugging_face(hf, rows, phase, spec)
            titans = titan(trainer, plain, rows, step)
            print(f"{name} phase {phase.index}: loss native {mine[0]:.7f} HF {theirs[0]:.7f} titan {titans[0]:.7f}")
            assert same(mine, theirs), f"{name} phase {phase.index}: HF differs from native"
            assert same(mine, titans), f"{name} phase {phase.index}: torchtitan differs from native"
            if phase.index == 1:
                # The check can fail: a torchtitan loss that weighs the bag by 1/i instead is caught.
                real = titan_loss.multi_hot_cross_entropy
                other = "exp" if spec.weights == "power" else "power"
                monkeypatch.setattr(titan_loss, "multi_hot_cross_entropy",
                                    lambda pred, t, w, **kw: real(pred, t, other if t.shape[-1] > 1 else w, **kw))
                assert not same(mine, titan(trainer, plain, rows, step)), "a front-end weighing differently went unseen"
                monkeypatch.setattr(titan_loss, "multi_hot_cross_entropy", real)
    finally:
        trainer.close()


def test_every_front_end_reads_one_spec():
    """One default, one field list and one set of messages: superpose's config section is the
    spec, torchtitan's section is the spec, and the HF trainer takes the spec."""
    import inspect

    from superpose.interop.hf_trainer import TSTTrainer as HFTrainer

    assert type(Config().tst) is TSTSpec
    assert TitanTrainer.Config.__dataclass_fields__["tst"].default_factory is TSTSpec
    assert inspect.signature(HFTrainer.__init__).parameters["tst"].annotation in ("TSTSpec | None", TSTSpec | None)
    bad = TSTSpec(bag_size=0, mode="sideways", loss="nll", reinit="all")
    assert [p.split(":")[0] for p in bad.problems()] == ["tst.bag_size", "tst.mode", "tst.loss", "tst.reinit"]
    assert set(bad.problems()) <= set(Config(tst=bad).problems())


def test_titan_refuses_what_it_does_not_offer(tiny_data, tmp_path):
    for field, value in (("weights", "mi"), ("reinit", "head"), ("reset_optimizer", True), ("mode", "sideways")):
        cfg = tiny_config(tiny_data, tmp_path / field)
        setattr(cfg.tst, field, value)
        with pytest.raises(UserError, match=f"tst.{field}"):
            cfg.__post_init__()
