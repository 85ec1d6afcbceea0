"""Benchmark: peak memory of the plain vs the chunked LM loss (components/train/loss.py),
forward + backward, on long rows over large vocabularies.

    .venv/bin/python bench/chunked_loss.py            # ~5 min on 2 busy cores, < 9 GB RSS
    .venv/bin/python bench/chunked_loss.py --quick    # the smallest case only

Each case runs in a fresh interpreter (`--case T V CHUNK`), so no allocator cache is
shared: a toy "model" whose forward is just the `lm_head` (hidden size 64, fp32) over T
positions of random final hidden states, every position scored, labels random in a
vocabulary of V. Measured: the process's peak RSS (`ru_maxrss`) during loss + backward
minus its RSS right before (inputs, weights and autograd's warm-up already counted),
and the wall time. The arithmetic beside it: the plain loss holds the fp32 logits
(T x V x 4 bytes), the log-softmax the cross-entropy saves for backward (as much again),
and in backward their gradient; the chunked loss holds only CHUNK x V of each, plus the
(T, H) hidden states and their gradient. Writes bench/results/chunked_loss.json.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
HIDDEN = 64
# (tokens, vocabulary, chunk sizes; 0 = plain). The plain loss at 8k x 128k would need
# ~4 x 4 GiB on this shared 24 GiB box: only the chunked loss runs there (no ratio).
CASES = [(8192, 32768, [0, 4096, 1024]), (16384, 32768, [0, 4096, 1024]),
         (8192, 131072, [1024])]


def rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def run_case(tokens: int, vocab: int, chunk: int) -> dict:
    import torch
    from torch import nn

    sys.path.insert(0, str(REPO))
    from components.train.loss import lm_loss

    class Head(nn.Module):
        """The last step of a causal LM: final hidden states -> logits."""

        def __init__(self):
            super().__init__()
            self.lm_head = nn.Linear(HIDDEN, vocab, bias=False)

        def get_output_embeddings(self):
            return self.lm_head

        def forward(self, hidden):
            return type("Out", (), {"logits": self.lm_head(hidden)})()

    torch.manual_seed(0)
    torch.set_num_threads(2)
    model = Head()
    hidden = torch.randn(1, tokens, HIDDEN, requires_grad=True)
    labels = torch.randint(0, vocab, (1, tokens))
    n = torch.tensor(tokens - 1)
    # warm autograd and the allocator on a tiny problem first, so the delta is the loss's
    small = torch.randn(1, 8, HIDDEN, requires_grad=True)
    lm_loss(model, {"hidden": small}, labels[:, :8], None, 4).backward()
    before = rss_mib()
    started = time.perf_counter()
    if chunk:
        loss = lm_loss(model, {"hidden": hidden}, labels, n, chunk)
    else:  # the plain loss: the model's full logits, ForCausalLMLoss's fp32 upcast
        logits = model(hidden).logits.float()
        loss = nn.functional.cross_entropy(logits[0, :-1], labels[0, 1:],
                                           reduction="sum") / n
    loss.backward()
    seconds = time.perf_counter() - started
    return {"tokens": tokens, "vocab": vocab, "hidden": HIDDEN, "chunk_tokens": chunk,
            "loss": float(loss), "peak_rss_delta_mib": round(rss_mib() - before, 1),
            "seconds": round(seconds, 2),
            "logits_fp32_mib": round(tokens * vocab * 4 / 2**20, 1),
            "chunk_logits_fp32_mib": round(min(chunk or tokens, tokens) * vocab * 4 / 2**20, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--case", nargs=3, type=int, metavar=("T", "V", "CHUNK"))
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    if args.case:
        print(json.dumps(run_case(*args.case)))
        return
    rows = []
    for tokens, vocab, chunks in CASES[:1] if args.quick else CASES:
        for chunk in chunks:
            out = subprocess.run([sys.executable, __file__, "--case", str(tokens), str(vocab),
                                  str(chunk)], capture_output=True, text=True, check=True)
            row = json.loads(out.stdout.strip().splitlines()[-1])
            rows.append(row)
            print(json.dumps(row))
    for row in rows:  # the chunked loss is the plain loss, to float noise
        plain = next((r for r in rows if r["tokens"] == row["tokens"]
                      and r["vocab"] == row["vocab"] and r["chunk_tokens"] == 0), None)
        if plain is None:
            continue
        row["loss_vs_plain"] = abs(row["loss"] - plain["loss"])
        row["peak_vs_plain"] = round(row["peak_rss_delta_mib"]
                                     / max(plain["peak_rss_delta_mib"], 1e-9), 3)
    result = {
        "what": "peak RSS delta of LM loss forward+backward, plain vs chunked "
                "(components/train/loss.py), fresh process per case, CPU fp32",
        "command": "python bench/chunked_loss.py" + (" --quick" if args.quick else ""),
        "arithmetic": "plain: fp32 logits T x V x 4 B, their log-softmax and gradient "
                      "(~3 x that); chunked: CHUNK x V x 4 B of each, recomputed per chunk",
        "cases": rows,
    }
    target = REPO / "bench" / "results" / "chunked_loss.json"
    target.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {target}")


if __name__ == "__main__":
    main()
