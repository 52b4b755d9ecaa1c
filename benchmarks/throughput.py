"""Training throughput: superpose's trainer against Hugging Face `LlamaForCausalLM` in a plain
PyTorch loop, with an identical config, side by side; MFU against the measured matmul peak.

Arms (each in its own fresh process, so a process-wide setting of one cannot help the other):
  superpose      `Trainer.train_step` as shipped (the preset plus --set overrides), phase 2
                 (next-token) and phase 1 (bags of s) interleaved step by step
  hf             transformers.LlamaForCausalLM with the same shape, dtype, threads, batch, data
                 loader and optimizer (AdamW, same groups and hyperparameters, same `fused`),
                 trained by the loop everyone writes: forward with labels, backward, clip, step
  hf+keep        (--decompose) hf after superpose.training.perf.keep_freed_memory(), the allocator setting
                 the trainer applies on CPU: how much of the gap is that setting
  superpose-nokeep (--decompose) superpose with train.keep_freed_memory=false
Rounds run the arms in turn (order reversed every other round) and each round's arm reports its
median step after a warm-up, so load hits every arm alike; the ratio is the median over rounds.

MFU = model FLOPs per second / the measured dense matmul peak (same threads and dtype), with model
FLOPs per position from `Transformer.flops_per_position` (6 x matmul parameters + attention); per
raw token that is the same in phase 2 and 1/s of it in phase 1.

Target (issue 7): superpose >= 1.2x the tokens/s of hf on CPU.

    .venv/bin/python benchmarks/throughput.py                       # cpu-small, 2 threads
    .venv/bin/python benchmarks/throughput.py --decompose --set train.compile=true --hf-compile
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time

import torch

from common import (bench_config, bench_trainer, fmt_flops, load_average, matmul_peak, median, phases,
                    print_machine)


def hf_model(cfg):
    from transformers import LlamaConfig, LlamaForCausalLM

    m = cfg.model
    hc = LlamaConfig(vocab_size=m.vocab_size, hidden_size=m.dim, intermediate_size=m.ffn_dim,
                     num_hidden_layers=m.n_layers, num_attention_heads=m.n_heads, num_key_value_heads=m.n_kv_heads,
                     max_position_embeddings=m.max_seq_len, rms_norm_eps=m.norm_eps, rope_theta=m.rope_theta,
                     tie_word_embeddings=m.tie_embeddings, attention_bias=False, mlp_bias=False,
                     bos_token_id=None, eos_token_id=None, pad_token_id=None,
                     use_cache=False)  # a training loop keeps no KV cache
    return LlamaForCausalLM(hc).train()


def arm_superpose(cfg, args) -> dict:
    """Median step time of phase 2 and phase 1, interleaved, in this process."""
    with tempfile.TemporaryDirectory() as tmp:
        trainer = bench_trainer(cfg, tmp)
    p1, p2 = phases(args.bag_size)
    times = {"phase 2": [], "phase 1": []}
    for i in range(args.warmup + args.steps):
        for name, p in (("phase 2", p2), ("phase 1", p1)) if i % 2 == 0 else (("phase 1", p1), ("phase 2", p2)):
            t0 = time.perf_counter()
            trainer.train_step(p)
            if i >= args.warmup:
                times[name].append(time.perf_counter() - t0)
    return {"phase 2": median(times["phase 2"]), "phase 1": median(times["phase 1"]),
            "params": trainer.model.num_params(),
            "flops_per_position": trainer.model.flops_per_position(cfg.data.seq_len)}


def arm_hf(cfg, args, keep: bool) -> dict:
    """The plain loop on LlamaForCausalLM; same data loader, optimizer and autocast as superpose."""
    from superpose.data import TrainLoader, open_dataset
    from superpose.training.optimizer import configure_optimizer

    if keep:
        from superpose.training.perf import keep_freed_memory

        keep_freed_memory()
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    torch.manual_seed(cfg.train.seed)
    model = hf_model(cfg)
    if args.hf_compile:
        model = torch.compile(model)
    # configure_optimizer groups by ndim and the name "embed_tokens", which HF's names share.
    opt = configure_optimizer(model, cfg)
    ds = open_dataset(cfg.data.path)
    loader = TrainLoader(ds.train, ds.train_docs, seed=cfg.train.seed, vocab_size=cfg.model.vocab_size)
    B, L = cfg.train.batch_size, cfg.data.seq_len
    bf16 = cfg.train.dtype == "bfloat16"
    times = []
    for i in range(args.warmup + args.steps):
        t0 = time.perf_counter()
        rows = torch.from_numpy(loader.next_rows(B, L))  # (B, L + 1)
        x, y = rows[:, :-1], rows[:, 1:].contiguous()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = model(input_ids=x, labels=x, shift_labels=y).loss  # mean next-token CE
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.optim.grad_clip)
        opt.step()
        opt.zero_grad(set_to_none=True)
        loss.item()
        if i >= args.warmup:
            times.append(time.perf_counter() - t0)
    return {"phase 2": median(times), "params": sum(p.numel() for p in model.parameters())}


def run_arm(arm: str, args) -> dict:
    cmd = [sys.executable, __file__, "--child", arm, *sys.argv[1:]]
    out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode:
        sys.exit(f"arm {arm} failed:\n{out.stderr[-4000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--preset", default="cpu-small")
    ap.add_argument("--bag-size", type=int, default=6)
    ap.add_argument("--data", help="a prepared data directory (default: synthetic tokens)")
    ap.add_argument("--set", nargs="*", default=[], metavar="SECTION.FIELD=VALUE",
                    help="config overrides for both arms (shape, dtype, threads, optim) and the trainer")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--steps", type=int, default=12, help="measured steps per arm and round")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--decompose", action="store_true", help="also run the hf+keep and superpose-nokeep arms")
    ap.add_argument("--hf-compile", action="store_true", help="torch.compile the Hugging Face model too")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    cfg = bench_config(args.preset, [f"tst.bag_size={args.bag_size}", *args.set], args.data)

    if args.child:
        if args.child.startswith("superpose"):
            if args.child == "superpose-nokeep":
                cfg.train.keep_freed_memory = False
            res = arm_superpose(cfg, args)
        else:
            res = arm_hf(cfg, args, keep=args.child == "hf+keep")
        print(json.dumps(res))
        return

    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    print_machine(f"benchmarks/throughput.py {' '.join(sys.argv[1:])}")
    B, L, s = cfg.train.batch_size, cfg.data.seq_len, args.bag_size
    dtype = torch.bfloat16 if cfg.train.dtype == "bfloat16" else torch.float32
    print(f"data: {cfg.data.path}; model {cfg.model.dim}d x {cfg.model.n_layers} layers, V={cfg.model.vocab_size}; "
          f"B={B} x L={L}; {cfg.train.dtype}; threads={torch.get_num_threads()}; optim.fused={cfg.optim.fused}; "
          f"train.compile={cfg.train.compile}; train.loss_chunk_rows={cfg.train.loss_chunk_rows}; {load_average()}")
    peak = matmul_peak("cpu", dtype)
    print(f"measured matmul peak ({cfg.train.dtype}, 2048^3, {torch.get_num_threads()} threads): {fmt_flops(peak)}/s")

    arms = ["superpose", "hf"] + (["hf+keep", "superpose-nokeep"] if args.decompose else [])
    per_round: dict[str, list[dict]] = {a: [] for a in arms}
    for r in range(args.rounds):
        for arm in (arms if r % 2 == 0 else arms[::-1]):
            per_round[arm].append(run_arm(arm, args))
        print(f"  round {r + 1}: " + ", ".join(f"{a} {per_round[a][-1]['phase 2'] * 1e3:.1f} ms" for a in arms),
              flush=True)

    fpp = per_round["superpose"][0]["flops_per_position"]
    print(f"\nparameters: superpose {per_round['superpose'][0]['params']:,}, hf {per_round['hf'][0]['params']:,}; "
          f"model FLOPs {fmt_flops(fpp)} per position: per raw token {fmt_flops(fpp)} in phase 2, "
          f"{fmt_flops(fpp / s)} in phase 1 (s={s})")
    print(f"median over {args.rounds} rounds of each arm's median step "
          f"({args.steps} steps after {args.warmup} warm-up):")
    rows = [(a, "phase 2", 1) for a in arms] + [("superpose", "phase 1", s)]
    for arm, ph, tpp in rows:
        t = median([x[ph] for x in per_round[arm]])
        pos = B * L / t
        print(f"  {arm:17s} {ph}: step {t * 1e3:7.1f} ms, {pos:9,.0f} positions/s, {pos * tpp:10,.0f} raw tokens/s, "
              f"{fmt_flops(pos * fpp)}/s = MFU {100 * pos * fpp / peak:.1f}%")
    ratios = [h["phase 2"] / sp["phase 2"] for sp, h in zip(per_round["superpose"], per_round["hf"])]
    print(f"\nsuperpose / hf tokens/s (phase 2, next-token): {statistics.median(ratios):.2f}x "
          f"(per round: {', '.join(f'{x:.2f}' for x in ratios)}; target >= 1.2x)")
    if args.decompose:
        for a, b, what in (("hf+keep", "hf", "the allocator setting alone, on hf"),
                           ("superpose", "superpose-nokeep", "the allocator setting alone, on superpose"),
                           ("superpose", "hf+keep", "superpose's own code, both with the allocator setting"),
                           ("superpose-nokeep", "hf", "superpose's own code, neither with it")):
            x = [pb["phase 2"] / pa["phase 2"] for pa, pb in zip(per_round[a], per_round[b])]
            print(f"  {a} / {b} tokens/s: {statistics.median(x):.2f}x ({what})")
    p1 = [sp["phase 2"] / sp["phase 1"] for sp in per_round["superpose"]]
    print(f"superpose phase 1 raw tokens/s vs phase 2: {s * statistics.median(p1):.2f}x (s={s} tokens per position)")
    print(load_average())


if __name__ == "__main__":
    main()
