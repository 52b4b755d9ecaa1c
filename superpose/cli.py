"""The `superpose` command line: thin verbs over the library.

    superpose prepare --out DATA_DIR [--vocab-size N] [--text PATH ... | --hf-dataset NAME | --tokens FILE]
                      [--tokenizer TOKENIZER] [--text-field NAME] [--eot-token TOKEN]
    superpose train --preset NAME --out RUN_DIR [--section.field=value | --section.field value ...]
    superpose train --resume RUN_DIR [--train.device=... ...]
    torchrun --nproc_per_node N -m superpose train ... --parallel.mode ddp|fsdp   (data parallel)
    superpose mi [--data DATA_DIR]      token-pair mutual information by distance (tst.weights=mi)
    superpose export RUN_DIR_OR_CHECKPOINT --hf OUT_DIR
    superpose generate RUN_DIR_OR_CHECKPOINT --prompt TEXT [--max-new-tokens N --temperature T --top-k K --seed S]
    superpose eval RUN_DIR_OR_CHECKPOINT [--data DATA_DIR] [--tasks PATH.yaml|NAME,...]
    superpose plot RUN_DIR [RUN_DIR ...] [--out PNG] [--x step|tokens|time] [--watch [--every SECONDS]]
    superpose presets

Every mistake a user can make ends in one line on stderr and exit status 2, no traceback
(cli_errors.py: the failures that are not a UserError but have a plain cause).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import shlex
import sys
from pathlib import Path

from .checks import check_seed
from .cli_errors import check_output_paths, failure_line
from .cli_parser import build_parser
from .errors import Interrupted, UserError

def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def cmd_prepare(args: argparse.Namespace) -> None:
    from .data import corpus, default_corpus
    from .data.prepare import prepare
    from .data.token_import import prepare_tokens

    if Path(args.out).exists() and not Path(args.out).is_dir():  # before reading gigabytes of text
        raise UserError(f"{args.out} is a file; give --out a directory to create")
    check_seed(args.seed, "--seed")
    inputs = (("--text", args.text), ("--hf-dataset", args.hf_dataset), ("--tokens", args.tokens),
              ("--tokenizer", args.tokenizer))
    for flag, value in inputs:  # '' would read as no input (the whole default corpus) or as Path('') = "."
        if value is not None and "" in (value if isinstance(value, list) else [value]):
            raise UserError(f"{flag} got an empty name; give it a path{' or a dataset name' * (flag == '--hf-dataset')}")
    given = [flag for flag, value in inputs[:3] if value]
    if len(given) > 1:
        raise UserError(f"{' and '.join(given)} are different inputs; prepare one data directory from one of them "
                        "(train on several with --data.mix)")
    if args.tokens:
        if not args.tokenizer:
            raise UserError("--tokens needs --tokenizer: the tokenizer that made the token ids (a tokenizer.json or "
                            "a folder holding one)")
        prepare_tokens(Path(args.out), Path(args.tokens), Path(args.tokenizer), args.token_dtype, args.val_fraction,
                       args.seed, args.eot_token, log=_log)
        return
    if args.text:
        sources = corpus.text_sources([Path(p) for p in args.text], args.text_field, args.split, log=_log)
    elif args.hf_dataset:
        sources = [corpus.hub_source(args.hf_dataset, args.hf_config, args.split, args.text_field,
                                     args.data_files or None)]
    else:
        sources = default_corpus.default_sources(default_corpus.cache_folder("downloads"), log=_log)
    prepare(Path(args.out), sources, vocab_size=args.vocab_size,
            tokenizer=Path(args.tokenizer) if args.tokenizer else None,
            val_fraction=args.val_fraction, seed=args.seed, log=_log, eot_token=args.eot_token,
            progress=sys.stderr.isatty() or args.progress)


def cmd_mi(args: argparse.Namespace) -> None:
    """Measure a data directory's token-pair mutual information by distance and fit its decay
    (what tst.weights=mi weighs the bag slots with): DATA_DIR/mi.json and mi.png."""
    from .data import mutual_info, open_dataset
    from .data.default_corpus import ensure_default_corpus

    data = Path(args.data) if args.data else ensure_default_corpus(args.vocab_size, _log)
    if args.max_distance < 3 or args.max_tokens < 1:
        raise UserError("--max-distance must be >= 3 and --max-tokens >= 1")
    if data.is_dir() and not os.access(data, os.W_OK):  # said before the measurement, not after it
        raise UserError(f"{data} is read-only, and superpose mi writes mi.json and mi.png into the data directory; "
                        "make it writable, or copy it (cp -r) to a writable place and measure the copy")
    record = mutual_info.measure(open_dataset(data), args.max_distance, args.max_tokens, log=_log)
    mutual_info.save(data, record, log=_log)


def cmd_train(args: argparse.Namespace, overrides: list[str]) -> None:
    """Train a new run (--preset, --out), or continue one from its newest checkpoint (--resume).
    A run stopped by SIGINT/SIGTERM saves a checkpoint and exits with 128 + the signal number."""
    from .presets import resolve
    from .training import run_training
    from .training.distributed import env_rank
    from .training.ownership import check_train_dir, claim
    from .training.resume import resume_config

    try:
        if args.resume and args.init_from_hf:  # the arguments first, then the folder they name
            raise UserError("--resume continues from the run's own checkpoint; drop --init-from-hf")
        if args.resume and (args.preset or args.out or args.config):
            raise UserError("--resume RUN_DIR continues that run with its own config and directory; "
                            "drop --preset, --config and --out")
        if args.resume or args.out:  # before anything is read, created or locked
            check_train_dir(Path(args.resume or args.out), resume=bool(args.resume))
        if args.resume:
            run_dir = Path(args.resume)
            if not run_dir.is_dir():
                resume_config(run_dir, overrides)  # says what is wrong with the path, creating nothing
            # The lock before the config is read: another writer could prune the checkpoint read here.
            with claim(run_dir, "run") if env_rank() == 0 else contextlib.nullcontext():
                cfg = resume_config(run_dir, overrides)
                _set_process_state(cfg)
                run_training(cfg, run_dir, log=_log, resume=True)
        else:
            if args.print_config:  # the resolved config, nothing trained or written
                print(json.dumps(resolve(args.preset, overrides, args.config).to_dict(), indent=2))
                return
            if not (args.preset or args.config) or not args.out:
                raise UserError("train needs --preset NAME or --config FILE, and --out RUN_DIR (or --resume RUN_DIR)")
            cfg, hf = resolve(args.preset, overrides, args.config), args.init_from_hf
            _warn_ignored(cfg, overrides)
            if hf:
                from .interop.hf_llama import config_from_hf

                cfg = config_from_hf(cfg, hf, overrides)
            _set_process_state(cfg)
            run_training(cfg, Path(args.out), log=_log, init_from_hf=Path(hf) if hf else None)
    except Interrupted as e:
        from .training.distributed import env_rank

        if env_rank() == 0:  # under torchrun every rank stops at the same step; rank 0 says so
            print(f"superpose: {e}", file=sys.stderr)
        raise SystemExit(128 + e.signum) from None


def _set_process_state(cfg) -> None:
    """train.threads and train.keep_freed_memory, for the whole process, once: what train,
    compare and sweep run is then built and stepped under the same settings."""
    from .training.build import resolve_device
    from .training.perf import set_process_state

    set_process_state(cfg.train.threads, cfg.train.keep_freed_memory, resolve_device(cfg.train.device))


def _warn_ignored(cfg, overrides: list[str]) -> None:
    from .config import ignored_settings
    from .training.distributed import env_rank

    if env_rank() == 0:
        for line in ignored_settings(cfg, overrides):
            _log(line)


def _experiment_config(args: argparse.Namespace, overrides: list[str]):
    """Preset + overrides (+ --bag-size/--ratio), with the data and vocabulary resolved up front
    so every arm and cell reads the same data directory."""
    from .presets import resolve
    from .training import tracking
    from .training import resolve_data, resolve_from_data

    if args.bag_size is not None:
        overrides = [*overrides, f"--tst.bag_size={args.bag_size}"]
    if args.ratio is not None:
        overrides = [*overrides, f"--tst.ratio={args.ratio}"]
    if not (args.preset or args.config):
        raise UserError(f"{args.verb} needs --preset NAME or --config FILE")
    cfg = resolve(args.preset, overrides, args.config)
    _warn_ignored(cfg, overrides)
    tracking.check(cfg.log)  # every arm logs to the trackers; a missing library is said before any runs
    _set_process_state(cfg)
    ds = resolve_data(cfg, _log)
    if not cfg.data.mix:  # the default corpus, once prepared, by its path (a mixture names its directories)
        cfg.data.path = str(ds.path)
    cfg = resolve_from_data(cfg, ds)
    if args.seeds < 1:
        raise UserError(f"--seeds must be >= 1, got {args.seeds}")
    check_seed(args.seed0, "--seed0")
    check_seed(args.seed0 + args.seeds - 1, "--seed0 + --seeds - 1 (the last seed)")
    return cfg, list(range(args.seed0, args.seed0 + args.seeds))


def _floats(text: str, flag: str) -> list[float]:
    try:
        values = [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise UserError(f"{flag} takes comma-separated numbers, got {text!r}") from None
    if not all(math.isfinite(v) for v in values):
        raise UserError(f"{flag} takes finite numbers, got {text!r}")
    return values


def cmd_compare(args: argparse.Namespace, overrides: list[str], argv: list[str]) -> None:
    from .experiments.baselines import parse_baselines, parse_grid
    from .experiments.compare import compare

    variants = parse_baselines(args.baselines) + parse_grid(args.baseline_grid, "--baseline-grid")
    tst_grid = parse_grid(args.tst_grid, "--tst-grid", tst=True)

    cfg, seeds = _experiment_config(args, overrides)
    factors = tuple(_floats(args.baseline_lengths, "--baseline-lengths"))
    if not factors or min(factors) <= 0:
        raise UserError(f"--baseline-lengths must be positive multiples of the steps, got {args.baseline_lengths!r}")
    steps = None
    if args.steps:
        lengths = _floats(args.steps, "--steps")
        if any(n != int(n) or n < 1 for n in lengths):
            raise UserError(f"--steps takes positive whole step counts, e.g. 300,600,1200; got {args.steps!r}")
        steps = [int(n) for n in lengths]
    compare(cfg, Path(args.out), seeds, factors, command=shlex.join(["superpose", *argv]), log=_log,
            steps=steps, baselines=variants, tst_grid=tst_grid)


def cmd_sweep(args: argparse.Namespace, overrides: list[str], argv: list[str]) -> None:
    from .experiments.sweep import sweep

    args.bag_size = args.ratio = None
    cfg, seeds = _experiment_config(args, overrides)
    sizes = _floats(args.bag_sizes, "--bag-sizes")
    if any(s != int(s) for s in sizes):
        raise UserError(f"--bag-sizes takes integers, got {args.bag_sizes!r}")
    sweep(cfg, Path(args.out), [int(s) for s in sizes], _floats(args.ratios, "--ratios"), seeds,
          command=shlex.join(["superpose", *argv]), log=_log)


def cmd_plot(args: argparse.Namespace) -> None:
    """Train loss, val loss, LR and grad norm of one or more runs in one PNG; --watch redraws it
    while they train and returns when all have finished (Ctrl-C: exit 0, the last image kept)."""
    from .experiments.plot import AXES, check_out, check_run, default_out, plot_runs, watch

    if args.x not in AXES:
        raise UserError(f"--x must be one of {', '.join(AXES)}, got {args.x!r}")
    if not (args.every > 0 and math.isfinite(args.every)):
        raise UserError(f"--every takes a positive number of seconds between looks, got {args.every:g}")
    for run in args.runs:
        check_run(Path(run), empty_ok=args.watch)  # --watch waits for a run's first step
    out = default_out(args.runs, args.out)
    check_out(out)
    runs = [Path(r) for r in args.runs]
    if not args.watch:
        _log(f"wrote {plot_runs(runs, out, args.x)}")
    else:
        watch(runs, out, args.x, args.every, _log)


def cmd_export(args: argparse.Namespace) -> None:
    from .interop.hf_llama import export_hf

    export_hf(args.path, args.hf, dtype=args.dtype, log=_log)


def cmd_generate(args: argparse.Namespace) -> None:
    from .inference.generate import generate

    # The prompt is echoed by generate once every argument and the model have been checked, so a
    # mistake prints one error line and nothing on stdout.
    generate(args.path, args.prompt, max_new_tokens=args.max_new_tokens, temperature=args.temperature,
             top_k=args.top_k, seed=args.seed, device=args.device, log=_log, echo_prompt=True)
    sys.stdout.write("\n")


def cmd_presets(_: argparse.Namespace) -> None:
    from .core.model import architecture
    from .presets import PRESETS

    print(f"{'preset':<10} {'arch':<9} {'params':>8} {'active':>8} {'d':>4} {'layers':>6} {'experts':>7} "
          f"{'L':>5} {'B':>5} {'steps':>6} {'s':>3} {'r':>4} {'lr':>7}")
    for name, make in PRESETS.items():
        c = make()
        m = c.model.resolve()
        total, active = _param_counts(c)
        experts = architecture(m.arch).experts(m)
        print(f"{name:<10} {m.arch:<9} {_short(total):>8} {_short(active):>8} {m.dim:>4} {m.n_layers:>6} "
              f"{experts:>7} {c.data.seq_len:>5} {c.train.batch_size:>5} {c.train.steps:>6} {c.tst.bag_size:>3} "
              f"{c.tst.ratio:>4} {c.optim.lr:>7.0e}")
    print("params: all parameters, with the vocabulary of model.vocab_size or else the default corpus's "
          "data.vocab_size; active: those one token uses (top_k of an MoE layer's experts)")


def _param_counts(c) -> tuple[int, int]:
    """(total, active) parameters of a preset's model, counted on the meta device (nothing allocated)."""
    import copy

    import torch

    from .core.model import model_class

    m = copy.deepcopy(c.model)
    m.vocab_size = m.vocab_size or c.data.vocab_size
    with torch.device("meta"):
        model = model_class(m)(m)
    return model.num_params(), model.num_active_params()


def _short(n: int) -> str:
    return f"{n / 1e9:.2f}B" if n >= 1e9 else f"{n / 1e6:.1f}M"


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()  # cli_parser.py: each verb's options
    argv = sys.argv[1:] if argv is None else list(argv)  # compare and sweep quote it as their command
    args, extra = parser.parse_known_args(argv)
    try:
        check_output_paths(args)
        if args.verb == "train":
            cmd_train(args, extra)
        elif args.verb == "compare":
            cmd_compare(args, extra, argv)
        elif args.verb == "sweep":
            cmd_sweep(args, extra, argv)
        elif extra:
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        elif args.verb == "prepare":
            cmd_prepare(args)
        elif args.verb == "mi":
            cmd_mi(args)
        elif args.verb == "export":
            cmd_export(args)
        elif args.verb == "generate":
            cmd_generate(args)
        elif args.verb == "eval":
            from .eval_cli import cmd_eval

            cmd_eval(args, _log)
        elif args.verb == "plot":
            cmd_plot(args)
        else:
            cmd_presets(args)
    except UserError as e:
        from .training.distributed import rank_tag

        print(f"superpose: error: {rank_tag()}{e}", file=sys.stderr)  # "[rank R] " under torchrun
        return 2
    except Interrupted as e:  # compare and sweep: saved, and the message says how to go on
        print(f"superpose: {e}", file=sys.stderr)
        return 128 + e.signum
    except KeyboardInterrupt:
        print("superpose: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # the reader left early (`superpose presets | head`): not an error of ours
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second failure at exit's flush
        return 141  # 128 + SIGPIPE, as a shell tool killed by it
    except Exception as e:
        from .training.distributed import rank_tag

        said = failure_line(e)  # out of memory, a path too long, another rank that failed first
        if said is None:
            raise
        line, status = said
        print(f"superpose: error: {rank_tag()}{line}", file=sys.stderr)
        return status
    return 0
