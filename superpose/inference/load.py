"""Find and load a trained model: from a run directory or from one of its checkpoints.

    load_model(path)      -> Transformer (eval mode): forward(input_ids (B, T)) -> logits (B, T, V)
    load_tokenizer(path)  -> tokenizers.Tokenizer
    locate(path)          -> ModelFiles: where the weights, architecture, tokenizer and run config are,
                             and whether the weights are a phase-1 (superposition) model

`path` is a run directory (final `model.safetensors` + `model.json`; if the final model is not
there yet but checkpoints are, the newest checkpoint) or a checkpoint directory
(`RUN_DIR/checkpoints/step-NNNNNN/`, with `meta.json` + `model.safetensors`).

A checkpoint has no tokenizer of its own: it is taken from the checkpoint directory, else the run
directory, else the data directory the run trained on (checked against the tokenizer's sha256
recorded in the checkpoint, when there is one).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..config import Config
from ..core.arch import ModelConfig
from ..core.llama import Transformer
from ..core.model import empty_model, saved_model_config
from ..errors import UserError, command
from ..files import sha256_file


@dataclass
class ModelFiles:
    """Where a trained model's files are: its weights, architecture, run config and tokenizer.
    (Not to be confused with `data.corpus.Source`, a source of raw text.)"""

    path: Path
    """The directory that holds the weights (a run directory or a checkpoint directory)."""
    kind: str
    """"run" (the final model) or "checkpoint"."""
    model_config: ModelConfig
    run_config: Config | None
    """The run's resolved config (`Config.from_dict` of what it recorded: a field an older run did
    not record takes Config's default); None when the run recorded none (no config.json)."""
    step: int | None
    """Optimizer steps the weights have taken (None when the run config is unknown)."""
    tokenizer_candidates: list[Path]
    tokenizer_sha256: str | None = None
    hold: object = field(default=None, repr=False, compare=False)
    """A checkpoint's read hold (`superpose.checkpoint.hold`): a live run's writer does not prune it
    while this object is alive."""
    config: dict = field(default_factory=dict, repr=False)
    """The run config as its file holds it (sections as dicts; empty if unknown). Read `run_config`:
    this is kept only for interop/hf_llama's model card until it reads `run_config` too."""

    @property
    def weights(self) -> Path:
        return self.path / "model.safetensors"

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def phase1_steps(self) -> int:
        """Steps of phase 1 (superposition) in the run this model comes from; 0 without TST."""
        return self.run_config.build_schedule().switch_step if self.run_config is not None else 0

    @property
    def is_phase1(self) -> bool:
        """True when every step these weights took was a superposition step: the LM head then
        predicts bags, not next tokens. (A checkpoint taken right at the switch is one.)"""
        return self.step is not None and 0 < self.step <= self.phase1_steps

    @property
    def seq_len(self) -> int:
        """The training context in positions (data.seq_len), else the model's max_seq_len."""
        return self.run_config.data.seq_len if self.run_config is not None else self.model_config.max_seq_len

    @property
    def data_path(self) -> Path | None:
        return _data_dir(self.run_config)


def _data_dir(config: Config | None) -> Path | None:
    """The data directory a run trained on: data.path; for a run on a mixture (data.mix) its first
    directory, whose tokenizer the run took; for a run on the default corpus (both empty) the
    default corpus in $SUPERPOSE_CACHE at the run's data.vocab_size. None when the run config is
    unknown."""
    from ..data.mixture import parse_mix
    from ..data.default_corpus import default_data_dir

    if config is None:
        return None
    if config.data.path:
        return Path(config.data.path)
    if config.data.mix:
        return Path(parse_mix(config.data.mix)[0][0])
    return default_data_dir(config.data.vocab_size)


def _run_config(d: dict, where: Path) -> Config | None:
    """A run config as recorded (config.json, or a checkpoint's meta.json), as a `Config`; None
    when none was recorded ({})."""
    if not d:
        return None
    try:
        if not isinstance(d, dict) or not all(isinstance(v, dict) for v in d.values()):
            raise UserError("its sections are not objects")
        return Config.from_dict(d)
    except UserError as e:
        raise UserError(f"{where} holds a run config this superpose cannot read ({e}); was it written by another "
                        "superpose version?") from None


def _read_json(path: Path, what: str) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UserError(f"cannot read {what} {path} ({e}); the directory is damaged") from None


def _model_config(d: dict, where: Path) -> ModelConfig:
    try:
        cfg = saved_model_config(d).resolve()
    except (TypeError, ValueError) as e:
        raise UserError(f"{where} does not describe a superpose model ({e}); was it written by another "
                        "superpose version?") from None
    if cfg.vocab_size < 1 or cfg.problems():
        raise UserError(f"{where} describes an invalid model ({'; '.join(cfg.problems()) or 'vocab_size 0'})")
    return cfg


def _looks_like_hf(path: Path) -> bool:
    cfg = path / "config.json"
    if not cfg.is_file() or (path / "model.json").is_file():
        return False
    try:
        return "model_type" in json.loads(cfg.read_text())
    except (OSError, ValueError):
        return False


def locate(path: Path | str) -> ModelFiles:
    """Find the weights, architecture, run config and tokenizer behind a run or checkpoint path."""
    from .. import checkpoint

    path = Path(path)
    if not path.exists():
        raise UserError(f"{path} does not exist; give a run directory (superpose train --out) or a checkpoint "
                        "directory (RUN_DIR/checkpoints/step-NNNNNN)")
    if not path.is_dir():
        raise UserError(f"{path} is a file; give its directory: a run directory or a checkpoint directory")
    if _is_data_dir(path):  # it has a meta.json too: not a damaged checkpoint, the wrong folder
        raise UserError(f"{path} is a prepared data directory (superpose prepare), not a trained model: give a run "
                        "directory (superpose train --out) or one of its checkpoints/step-N; to score a model on this "
                        f"data: {command('superpose', 'eval', 'RUN_DIR', '--data', path)}")
    if (path / "meta.json").is_file():
        # Held first, so a live run's writer cannot prune it while it is verified and read.
        held = checkpoint.hold(path)
        # The weights are verified against meta.json on every read, as --resume does, not only
        # when training continues: a flipped byte must not be exported or evaluated.
        meta = checkpoint.read_meta(path)
        checkpoint.verify_files(path, meta["files"], ("model.safetensors",), "checkpoint file", "meta.json")
        config, run_dir = meta["config"], path.parent.parent
        run_config = _run_config(config, path / "meta.json")
        data = _data_dir(run_config)
        candidates = [path / "tokenizer.json", run_dir / "tokenizer.json"] + ([data / "tokenizer.json"] if data else [])
        return ModelFiles(path, "checkpoint", _model_config(config.get("model", {}), path / "meta.json"), run_config,
                          int(meta["step"]), candidates, meta["data"].get("tokenizer_sha256"), held, config)
    # A finished run (summary.json): its final model, verified, or a refusal naming what to use.
    records = checkpoint.verify_final(path) if (path / "summary.json").is_file() else None
    if (path / "model.safetensors").is_file() and (path / "model.json").is_file() and (
            (path / "summary.json").is_file() or not checkpoint.checkpoints(path)):  # else unfinished: a checkpoint
        if records is not None:
            # The run config decides the context, the data and the evaluation tokens (recorded since issue 22).
            checkpoint.verify_files(path, records, ("config.json",) if "config.json" in records else (), "run file",
                                    "summary.json", fix="put back the config the run trained with (each checkpoint's "
                                    "meta.json holds it too); evaluate on other data or tokens with eval --data and "
                                    "--val-tokens, not by editing it")
        config = _read_json(path / "config.json", "run config") if (path / "config.json").is_file() else {}
        run_config = _run_config(config, path / "config.json")
        data = _data_dir(run_config)
        if records is not None:
            checkpoint.verify_files(path, records, ("tokenizer.json",), "model file", "summary.json",
                                    fix=f"copy the tokenizer.json of the data directory the run trained on "
                                    f"({data or 'DATA_DIR'}) into {path}")
        candidates = [path / "tokenizer.json"] + ([data / "tokenizer.json"] if data else [])
        model_config = _model_config(_read_json(path / "model.json", "model architecture"), path / "model.json")
        return ModelFiles(path, "run", model_config, run_config, run_config.train.steps if run_config else None,
                          candidates, config=config)
    run_dir = path.parent if path.name == checkpoint.DIRNAME and not checkpoint.checkpoints(path) else path
    if checkpoint.checkpoints(run_dir):  # RUN_DIR/checkpoints itself is taken for its run
        return _newest_checkpoint(run_dir)
    if _looks_like_hf(path):
        raise UserError(f"{path} is a Hugging Face model folder, not a superpose run: load it with "
                        "transformers.AutoModelForCausalLM.from_pretrained, or continue training it with "
                        f"{command('superpose', 'train', '--init-from-hf', path)}")
    if (path / "metrics.jsonl").is_file():
        raise UserError(f"run {path} has neither a final model (model.safetensors + model.json) nor checkpoints "
                        "yet: let it finish, or train with --checkpoint.every N")
    raise UserError(f"{path} is not a superpose run directory (no model.safetensors + model.json) nor a checkpoint "
                    "(no meta.json); give the --out directory of superpose train or one of its checkpoints/step-N")


def _is_data_dir(path: Path) -> bool:
    """Whether `path` is a prepared data directory: its meta.json records splits, never a step."""
    try:
        meta = json.loads((path / "meta.json").read_text())
    except (OSError, UnicodeDecodeError, ValueError):
        return False
    return isinstance(meta, dict) and "splits" in meta and "step" not in meta


def _newest_checkpoint(run_dir: Path) -> ModelFiles:
    """The newest checkpoint of a run, held. A live run's writer may prune the newest one between
    the listing and the hold: then the listing is read again, so a reader never mistakes a
    checkpoint pruned by a healthy run for a lost one.

    A step-N folder without meta.json is not a checkpoint (meta.json is written last, so it is a
    save that never finished, or a stray folder): it is passed over for the newest one that has
    it. A checkpoint that has one and fails verification is refused, never skipped."""
    from .. import checkpoint

    for _ in range(20):
        found = [p for _, p in checkpoint.checkpoints(run_dir)]
        complete = [p for p in found if (p / "meta.json").is_file()]
        if not complete:
            if found:
                raise UserError(f"run {run_dir} has no complete checkpoint: {', '.join(p.name for p in found)} "
                                "hold no meta.json (saves that never finished); train it again (superpose train "
                                "--out a new directory)")
            break
        try:
            return locate(complete[-1])
        except UserError:
            if complete[-1].is_dir():  # still there: really damaged
                raise
    return locate(checkpoint.newest(run_dir))


def load_model(path: Path | str | ModelFiles, device: str | torch.device = "cpu") -> Transformer:
    """The model of a run directory or checkpoint, in eval mode, float32, on `device`.

    `forward(input_ids)` takes (B, T) token ids and returns logits (B, T, V).
    """
    from ..checks import check_model_memory, count_params, device as check_device
    from ..checkpoint import load_weights

    device = check_device(device)  # before the files are read: one line for cuda on a CPU-only install
    src = path if isinstance(path, ModelFiles) else locate(path)
    check_model_memory(count_params(src.model_config), device, training=False, what=f"the model of {src.path}",
                       fix="use a machine (or --device) with more memory")
    model = empty_model(src.model_config, device)
    load_weights(src.path, model)
    return model.eval()


def tokenizer_path(src: ModelFiles) -> Path:
    """The tokenizer.json that belongs to a located model, or a UserError saying where it was sought."""
    for p in src.tokenizer_candidates:
        if p.is_file():
            if src.tokenizer_sha256 and p.parent != src.path:
                if sha256_file(p) != src.tokenizer_sha256:
                    raise UserError(f"{p} is not the tokenizer {src.path} was trained with (its sha256 differs "
                                    f"from the checkpoint's record); copy the right tokenizer.json into {src.path}")
            return p
    looked = ", ".join(str(p) for p in src.tokenizer_candidates)
    raise UserError(f"no tokenizer for {src.path} (looked for {looked}); copy the tokenizer.json of the data "
                    f"directory it was trained on into {src.path}")


def load_tokenizer(path: Path | str | ModelFiles):
    """The `tokenizers.Tokenizer` of a run directory or checkpoint."""
    from ..data.tokenizer import load_tokenizer_file

    p = tokenizer_path(path if isinstance(path, ModelFiles) else locate(path))
    return load_tokenizer_file(p, fix="replace it with the data directory's tokenizer.json")


def eot_id(tokenizer, src: ModelFiles | None = None) -> int:
    """The end-of-text id: the separator the training data put after every document."""
    return special_tokens(tokenizer, src)["eot_id"]


SPECIAL_TOKENS = "special_tokens.json"


def special_tokens(tokenizer, src: ModelFiles | None = None) -> dict:
    """{"eot_id", "prefix_ids"}: the end-of-document token and the special tokens before each
    document (a BOS template's) that the model trained with, as the data directory recorded them
    (RUN_DIR/special_tokens.json, or the data's meta.json, next to the tokenizer used); without a
    record, what the tokenizer itself says (`find_eot`, `template_prefix`)."""
    from ..data.tokenizer import find_eot, template_prefix

    if src is not None:
        try:
            folder = tokenizer_path(src).parent
        except UserError:
            folder = None
        for name in (SPECIAL_TOKENS, "meta.json"):
            if folder is not None and (folder / name).is_file():
                d = _read_json(folder / name, "the special-token record")
                if "eot_id" in d:
                    return {"eot_id": int(d["eot_id"]), "prefix_ids": [int(i) for i in d.get("prefix_ids", [])]}
    return {"eot_id": find_eot(tokenizer), "prefix_ids": template_prefix(tokenizer)}
