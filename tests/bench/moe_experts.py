"""Benchmark: expert pruning on a tiny Mixtral trained here, learned masks vs the frequency
baseline.

The model is built and trained by this script (it is not a real MoE LLM): a Mixtral of
``--layers`` layers, hidden size 64, 8 experts of width 64 per layer, top-2 routing, a
512-token byte-level BPE trained on the same text, trained with AdamW on the first 90 % of
``shared/data/tinyshakespeare/input.txt`` (plus the router's load-balancing loss, so the
experts get used).  Then one ``pgprune compare`` grid: estimators ``reinforce`` and
``none`` from the ``expert-frequency`` and ``random`` starts, at 25 % and 50 % of the
experts (``--granularity expert``, ``per-type`` budget), calibrating on the training text
and measuring perplexity on the held-out last 10 %.

    python tests/bench/moe_experts.py --work-dir runs/bench-moe

Prints the compare command it ran; the grid's tables are in WORK/NAME/compare.md.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
TEXT = ROOT.parent / "shared" / "data" / "tinyshakespeare" / "input.txt"


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work-dir", default="runs/bench-moe")
    parser.add_argument("--text", default=str(TEXT))
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--train-steps", type=int, default=600)
    parser.add_argument("--prune-steps", type=int, default=300)
    parser.add_argument("--rates", default="0.25,0.5")
    parser.add_argument("--lr", default="0.05", help="reinforce's learning rate")
    parser.add_argument("--seeds", default="0")
    parser.add_argument("--name", default="compare", help="the grid's directory inside WORK")
    return parser.parse_args()


def tokenizer_for(text: str):  # type: ignore[no-untyped-def]
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=512, special_tokens=["<pad>", "<s>", "</s>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tok.train_from_iterator(text.split("\n\n"), trainer=trainer)
    tok.post_processor = processors.TemplateProcessing(single="<s> $A",
                                                       special_tokens=[("<s>", 1)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>",
                                   pad_token="<pad>", model_max_length=4096)


def train_model(args: argparse.Namespace, work: Path, train_text: str) -> Path:
    import torch
    from transformers import AutoModelForCausalLM

    from pgprune_core.testing.moe import tiny_moe_config

    target = work / "model"
    if (target / "config.json").exists():
        return target
    tokenizer = tokenizer_for(train_text)
    ids = torch.tensor(tokenizer(train_text)["input_ids"], dtype=torch.long)
    config = tiny_moe_config("mixtral", vocab_size=512, hidden_size=64, expert_size=64,
                             num_hidden_layers=args.layers, num_attention_heads=4,
                             num_key_value_heads=2, num_experts=8, top_k=2,
                             output_router_logits=True, router_aux_loss_coef=0.02)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config)
    optimiser = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.01)
    generator = torch.Generator().manual_seed(0)
    seq, batch = 64, 16
    start = time.time()
    model.train()
    for step in range(args.train_steps):
        offsets = torch.randint(0, ids.numel() - seq - 1, (batch,), generator=generator)
        tokens = torch.stack([ids[o:o + seq] for o in offsets.tolist()])
        lr = 3e-3 * min(1.0, (step + 1) / 50) * (0.1 + 0.9 * (1 - step / args.train_steps))
        for group in optimiser.param_groups:
            group["lr"] = lr
        loss = model(input_ids=tokens, labels=tokens).loss
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        if step % 100 == 0 or step == args.train_steps - 1:
            print(f"train step {step}: loss {loss.item():.3f} ({time.time() - start:.0f} s)",
                  file=sys.stderr)
    model.eval()
    model.config.output_router_logits = False
    model.save_pretrained(target)
    tokenizer.save_pretrained(target)
    return target


def main() -> None:
    args = parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import torch

    torch.set_num_threads(1)
    work = Path(args.work_dir)
    work.mkdir(parents=True, exist_ok=True)
    text = Path(args.text).read_text(encoding="utf-8")
    cut = int(len(text) * 0.9)
    (work / "train.txt").write_text(text[:cut], encoding="utf-8")
    (work / "heldout.txt").write_text(text[cut:], encoding="utf-8")
    model = train_model(args, work, text[:cut])
    command = [
        sys.executable, "-m", "pgprune_core", "compare", "--model", str(model),
        "--calib-file", str(work / "train.txt"), "--eval-file", str(work / "heldout.txt"),
        "--data.eval", "[]", "--seq-len", "64", "--batch-size", "8",
        "--steps", str(args.prune_steps), "--granularity", "expert",
        "--rates", args.rates, "--seeds", args.seeds,
        "--estimator", "reinforce", "--estimator", "none",
        "--init", "expert-frequency", "--init", "random",
        "--estimator.reinforce.lr", args.lr, "--estimator.reinforce.scale_lr_to_steps", "false",
        "--evaluator", "perplexity", "--evaluation.seq_len", "64",
        "--training.threads", "1", "--output.save_model", "false", "--in-process",
        "--out", str(work / args.name),
    ]
    print(" ".join(command[1:]))
    subprocess.run(command, check=True)


if __name__ == "__main__":
    main()
