"""Instruction-tuning speed: `pmcllama finetune` (packing) vs PMC-LLaMA's SFT recipe.

The recipe PMC-LLaMA released (Stanford-Alpaca style): the Alpaca prompt, prompt tokens
masked out of the loss, batches padded to their longest example, Hugging Face `Trainer`
with its default AdamW. pmcllama: its Alpaca template, examples packed into seq_len rows
without attention between them. Same model, examples (the first --examples of the file),
truncation length, micro-batch, gradient accumulation, precision and threads; one epoch
each, each side in a fresh process. The measure is useful (non-padding) tokens per second,
from the end of the first optimizer step to the end of the last; also peak RSS.

    python bench/bench_finetune.py --examples 48 --seq-len 256 --micro-batch 2 --global-batch 4
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

from _sides import launch as run_side, report_side, save

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "instruct" / "chatdoctor5k.json"
PROMPT_INPUT = ("Below is an instruction that describes a task, paired with an input that provides further context. "
                "Write a response that appropriately completes the request.\n\n"
                "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:")
PROMPT_NO_INPUT = ("Below is an instruction that describes a task. Write a response that appropriately completes "
                   "the request.\n\n### Instruction:\n{instruction}\n\n### Response:")


def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="smollm2-135m", help="model name or folder (default smollm2-135m)")
    p.add_argument("--data", default=str(DATA), help="Alpaca-layout JSON ({instruction, input, output} records)")
    p.add_argument("--examples", type=int, default=200, help="train on N records (one epoch)")
    p.add_argument("--pick", choices=["first", "random"], default="first",
                   help="the first N records, or N drawn at random (seed 0): use random for files grouped by source")
    p.add_argument("--seq-len", type=int, default=512, help="truncation length (and pmcllama's packed row length)")
    p.add_argument("--micro-batch", type=int, default=4, help="sequences per forward/backward")
    p.add_argument("--global-batch", type=int, default=8, help="sequences per optimizer step")
    p.add_argument("--threads", type=int, default=os.cpu_count(), help="torch threads for both sides")
    p.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")
    p.add_argument("--out", default=str(ROOT / "bench" / "results" / "train_finetune.json"), help="result JSON")
    p.add_argument("--count-only", action="store_true", help="only count useful vs computed tokens (no training)")
    p.add_argument("--side", choices=["pmcllama", "pmc_llama"], help=argparse.SUPPRESS)
    p.add_argument("--work", help=argparse.SUPPRESS)
    return p.parse_args(argv)


def records(a) -> list[dict]:
    data = json.loads(Path(a.data).read_text(encoding="utf-8"))
    if a.pick == "random":
        import random

        return random.Random(0).sample(data, min(a.examples, len(data)))
    return data[:a.examples]


def run_pmcllama(a, work: Path) -> dict:
    from pmcllama import finetune
    from pmcllama.training.config import FinetuneConfig

    folder = work / "instructions"
    folder.mkdir()
    with open(folder / "train.jsonl", "w", encoding="utf-8") as f:
        for r in records(a):
            user = r["instruction"] + (f"\n\n{r['input']}" if r.get("input") else "")
            f.write(json.dumps({"messages": [{"role": "user", "content": user},
                                             {"role": "assistant", "content": r["output"]}]}) + "\n")
    (folder / "manifest.json").write_text(json.dumps({"stage": "instructions", "files": {"train": "train.jsonl"}}))
    out = finetune.run(FinetuneConfig(
        model=a.model, data=str(folder), out=str(work / "pmcllama"), seq_len=a.seq_len, micro_batch=a.micro_batch,
        global_batch=a.global_batch, epochs=1, lr=2e-5, optimizer={"warmup_steps": 1}, precision=a.precision, threads=a.threads,
        template="alpaca", packing=True, eval_val=False), force=True)
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return {"steps": len(rows), "tokens": rows[-1]["tokens"] - rows[0]["tokens"],
            "seconds": rows[-1]["elapsed_s"] - rows[0]["elapsed_s"]}


def encode_pmc_llama(tok, r: dict, seq_len: int) -> dict:
    """PMC-LLaMA / Stanford Alpaca preprocessing: labels -100 on the prompt, truncation to seq_len."""
    import torch

    source = (PROMPT_INPUT if r.get("input") else PROMPT_NO_INPUT).format_map(r)
    target = f"{r['output']}{tok.eos_token}"
    ids = tok(source + target, max_length=seq_len, truncation=True)["input_ids"]
    n_source = len(tok(source, max_length=seq_len, truncation=True)["input_ids"])
    labels = list(ids)
    labels[:n_source] = [-100] * n_source
    return {"input_ids": torch.tensor(ids), "labels": torch.tensor(labels)}


def run_pmc_llama(a, work: Path) -> dict:
    import torch
    from transformers import Trainer, TrainerCallback, TrainingArguments

    from pmcllama.models import load_model

    torch.set_num_threads(a.threads)
    model, tok = load_model(a.model)
    data = [encode_pmc_llama(tok, r, a.seq_len) for r in records(a)]
    counted = {"tokens": 0}

    def collate(batch):  # DataCollatorForSupervisedDataset: pad to the longest in the batch
        ids = torch.nn.utils.rnn.pad_sequence([b["input_ids"] for b in batch], batch_first=True,
                                              padding_value=tok.pad_token_id)
        labels = torch.nn.utils.rnn.pad_sequence([b["labels"] for b in batch], batch_first=True, padding_value=-100)
        mask = ids.ne(tok.pad_token_id)
        for i, b in enumerate(batch):  # pad may equal eos: count the real tokens by length
            mask[i, :len(b["input_ids"])] = True
            mask[i, len(b["input_ids"]):] = False
        counted["tokens"] += int(mask.sum())
        return {"input_ids": ids, "labels": labels, "attention_mask": mask.long()}

    marks = []

    class Clock(TrainerCallback):
        def on_step_end(self, args, state, control, **kw):
            marks.append((time.perf_counter(), counted["tokens"]))

    args = TrainingArguments(
        output_dir=str(work / "trainer"), per_device_train_batch_size=a.micro_batch,
        gradient_accumulation_steps=a.global_batch // a.micro_batch, num_train_epochs=1, learning_rate=2e-5,
        warmup_steps=1, lr_scheduler_type="cosine", weight_decay=0.0, bf16=a.precision == "bf16", logging_steps=1,
        save_strategy="no", report_to=[], use_cpu=True, dataloader_num_workers=0, seed=0, disable_tqdm=True,
        remove_unused_columns=False)
    Trainer(model=model, args=args, train_dataset=data, data_collator=collate, callbacks=[Clock()]).train()
    return {"steps": len(marks), "tokens": marks[-1][1] - marks[0][1], "seconds": marks[-1][0] - marks[0][0],
            "optim": args.optim if isinstance(args.optim, str) else args.optim.value}


def computed_tokens(a) -> dict:
    """Tokens each side pushes through the model per epoch (padding included), from the data alone:
    the recipe pads each micro-batch of shuffled examples to its longest; pmcllama pads each
    micro-batch of packed rows to its longest row. Speed-up bound = their ratio."""
    import numpy as np

    from pmcllama.finetune import batch_stream
    from pmcllama.models import load_tokenizer
    from pmcllama.training.config import FinetuneConfig
    from pmcllama.training.data import encode_chat

    tok = load_tokenizer(a.model)
    recs = records(a)
    theirs = [len(encode_pmc_llama(tok, r, a.seq_len)["input_ids"]) for r in recs]
    order = np.random.default_rng(0).permutation(len(theirs))
    padded = sum(a.micro_batch * max(theirs[j] for j in order[i:i + a.micro_batch]) for i in range(0, len(order), a.micro_batch))
    msgs = [[{"role": "user", "content": r["instruction"] + (f"\n\n{r['input']}" if r.get("input") else "")},
             {"role": "assistant", "content": r["output"]}] for r in recs]
    exs = [e for e in (encode_chat(tok, m, "alpaca", a.seq_len) for m in msgs) if e is not None]
    cfg = FinetuneConfig(model=a.model, data="x", out="x", seq_len=a.seq_len, micro_batch=a.micro_batch,
                         global_batch=a.global_batch, epochs=1, packing=True)
    stream, steps = batch_stream(exs, cfg)
    rows = [r for _ in range(steps) for r in next(stream)]
    lens = [len(r.input_ids) for r in rows]
    ours = sum(a.micro_batch * max(lens[i:i + a.micro_batch]) for i in range(0, len(lens), a.micro_batch))
    return {"pmc_llama": {"useful": sum(theirs), "computed": padded, "sequences": len(theirs)},
            "pmcllama": {"useful": sum(lens), "computed": ours, "sequences": len(rows)}}


def side(a) -> None:
    work = Path(a.work)
    result = run_pmcllama(a, work) if a.side == "pmcllama" else run_pmc_llama(a, work)
    report_side(result, "useful_tokens_per_s")


def launch(a, name: str, work: Path) -> dict:
    return run_side(__file__, name, ["--work", str(work), "--model", a.model, "--data", a.data,
           "--examples", str(a.examples), "--pick", a.pick, "--seq-len", str(a.seq_len), "--micro-batch", str(a.micro_batch),
           "--global-batch", str(a.global_batch), "--threads", str(a.threads), "--precision", a.precision], a.threads)


def main(argv=None) -> None:
    a = parse(argv)
    if a.side:
        return side(a)
    if not Path(a.data).is_file():
        sys.exit(f"no data file {a.data} (give --data)")
    if a.global_batch % a.micro_batch:
        sys.exit("global batch must be a multiple of micro batch")
    tokens = computed_tokens(a)
    for name, t in tokens.items():
        print(f"{name:9s} {t['sequences']} sequences, {t['useful']} useful tokens, {t['computed']} computed "
              f"({t['computed'] / t['useful']:.2f} per useful token)")
    if a.count_only:
        return
    with tempfile.TemporaryDirectory() as tmp:
        results = {}
        for name in ("pmcllama", "pmc_llama"):
            (Path(tmp) / name).mkdir()
            results[name] = launch(a, name, Path(tmp) / name)
    ratio = results["pmcllama"]["useful_tokens_per_s"] / results["pmc_llama"]["useful_tokens_per_s"]
    report = {"bench": "finetune", "model": a.model, "data": a.data, "examples": a.examples, "pick": a.pick, "seq_len": a.seq_len,
              "micro_batch": a.micro_batch, "global_batch": a.global_batch, "threads": a.threads,
              "precision": a.precision, "tokens_per_epoch": tokens, "results": results,
              "ratio_useful_tokens_per_s": ratio, "target": 2.5}
    save(a.out, report)
    for name, r in results.items():
        print(f"{name:9s} {r['useful_tokens_per_s']:8.1f} useful tokens/s over {r['steps']} steps  "
              f"peak RSS {r['peak_rss_mib']:.0f} MiB")
    print(f"pmcllama (packed) / PMC-LLaMA recipe: {ratio:.2f}x useful tokens/s (target >= 2.5x)   -> {a.out}")


if __name__ == "__main__":
    main()
