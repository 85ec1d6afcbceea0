"""Benchmark: translation throughput in source tokens/s, and the pt-PT variety detector.

    python bench/translate_throughput.py                      # CPU: memory + tiny seq2seq
    python bench/translate_throughput.py --model PATH_OR_ID --backend hf_llm   # GPU worker
    python bench/translate_throughput.py --build base --backend hf_seq2seq     # GPU, offline

Source tokens are words and punctuation marks of the distinct source texts
(`components.translation.engine.count_tokens`, backend-independent). Cases, each through
`translate_file` (the stage's own code: cache, backend, quality filter, records):

- `memory_cold` / `memory_warm`: the embedded translation-memory backend on the English
  seed set replicated `--repeat` times with distinct texts (a numbered suffix), first with
  an empty cache, then again with the cache warm;
- `hf_seq2seq_tiny_cpu`: a tiny random Marian model built here (the real HF generation
  path; its outputs are gibberish, so nearly everything is quarantined);
- `--model`: a real model (save_pretrained folder or hub id, `--backend`), on whatever
  `components.accel.detect_runtime()` finds (bf16 + flash-attn on CUDA when available);
- `--build base`: a randomly initialised model of realistic size built locally (Marian-base
  6+6 layers d512, or a 1B Llama for `hf_llm`), for GPU timing where no hub is reachable.
  Random models never stop early: every text runs to its token budget (a worst case).

pt-PT / pt-BR:
- `variety_detector`: the detector of `components.variety` on its held-out test set, with
  the one definition `bench/variety_eval.py` uses (`evaluate_detector`: `unknown` counts
  as wrong; `coverage` and `accuracy_on_covered` beside it), so the two files agree;
- `variety_filter`: how many translations the quality filter flags as pt-BR, on real
  filter output with a known answer. A translation memory maps a synthetic English source
  to each labelled sentence (the sample and the held-out test set): pt-PT sentences play
  good translations, pt-BR sentences pt-BR-flavoured ones. `translate_file` runs the
  stage's filter over them (defaults: `normalise_br` off), and the flagged count
  (`variety_pt_br` in the quarantine) is set against the known pt-BR targets as
  precision / recall, for all of them and for the held-out sentences alone. The memory
  cases count flags on the seed set's pt-PT memory (every flag there is a false one).
Writes `bench/results/translate_throughput.json` (or `--out`).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from components.records import Record, read_records, write_records  # noqa: E402
from components.settings import load_settings  # noqa: E402
from components.translation.backends import load_memory  # noqa: E402
from components.translation.engine import translate_file  # noqa: E402
from components.translation.protect import digit_runs  # noqa: E402

SMALL = {"train_per_task": 8, "test_per_task": 4, "seed_en_per_kind": 40}
_LETTERS = "abcdefghijklmnopqrstuvwxyz"


def corpus(data: Path, out: Path, repeat: int) -> tuple[Path, Path]:
    """Seed records x `repeat` with distinct texts, and a memory that covers them."""
    records = read_records(data / "seed_en" / "records.jsonl")
    memory = load_memory(data / "seed_en" / "translation_memory.jsonl")
    rows: list[Record] = []
    pairs: dict[str, str] = {}

    def variant(text: str, k: int) -> str:
        if k == 0 or text not in memory or not any(c.isalpha() for c in text) or len(text) < 12:
            return text
        src = f"{text} (ref. {k})"
        pairs[src] = f"{memory[text]} (ref. {k})"
        return src

    for k in range(repeat):
        for rec in records:
            update = {f: variant(t, k) for f, t in rec.texts().items()
                      if f not in ("answer", "chosen", "rejected")}
            rows.append(rec.model_copy(update={"id": f"{rec.id}-r{k}", **update}))
    out.mkdir(parents=True, exist_ok=True)
    write_records(out / "records.jsonl", rows)
    with (out / "memory.jsonl").open("w", encoding="utf-8") as fh:
        for s, t in {**memory, **pairs}.items():
            fh.write(json.dumps({"source": s, "target": t}, ensure_ascii=False) + "\n")
    return out / "records.jsonl", out / "memory.jsonl"


def build_model(kind: str, backend: str, corpus_texts: list[str], out: Path) -> Path:
    """A randomly initialised model with a tokenizer trained on `corpus_texts`."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import (
        LlamaConfig,
        LlamaForCausalLM,
        MarianConfig,
        MarianMTModel,
        PreTrainedTokenizerFast,
    )

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(corpus_texts, trainers.BpeTrainer(
        vocab_size=2000, special_tokens=["<pad>", "</s>", "<unk>", "<s>", "por_Latn"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False))
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>",
                                   unk_token="<unk>", bos_token="<s>")
    import torch

    torch.manual_seed(0)  # the same random model every run: comparable timings
    size = {"tiny": dict(d=32, layers=1, heads=2, ffn=64),
            "base": dict(d=512, layers=6, heads=8, ffn=2048),
            "1b": dict(d=2048, layers=16, heads=16, ffn=8192)}[kind]
    if backend == "hf_seq2seq":
        model = MarianMTModel(MarianConfig(
            vocab_size=len(fast), d_model=size["d"], encoder_layers=size["layers"],
            decoder_layers=size["layers"], encoder_attention_heads=size["heads"],
            decoder_attention_heads=size["heads"], encoder_ffn_dim=size["ffn"],
            decoder_ffn_dim=size["ffn"], max_position_embeddings=512, pad_token_id=0,
            eos_token_id=1, decoder_start_token_id=0, forced_eos_token_id=1))
    else:
        model = LlamaForCausalLM(LlamaConfig(
            vocab_size=len(fast), hidden_size=size["d"], intermediate_size=size["ffn"],
            num_hidden_layers=size["layers"], num_attention_heads=size["heads"],
            num_key_value_heads=max(1, size["heads"] // 4), max_position_embeddings=2048,
            pad_token_id=0, eos_token_id=1, bos_token_id=3))
    model.save_pretrained(out)
    fast.save_pretrained(out)
    return out


def run_case(name: str, records: Path, settings, out: Path) -> dict:
    t0 = time.perf_counter()
    report = translate_file(records, settings, out / name)
    wall = time.perf_counter() - t0
    keep = ("total", "kept", "quarantined", "by_reason", "texts", "cache_hits", "cache_misses",
            "source_tokens", "backend_source_tokens", "seconds", "backend_seconds",
            "tokens_per_s", "backend_tokens_per_s", "generated_tokens",
            "generated_tokens_per_s", "variety_flagged", "variety", "language_check",
            "model")
    row = {k: report[k] for k in keep}
    row["wall_seconds"] = round(wall, 3)
    print(f"{name:<24} {report['source_tokens']:>8} tok  {report['tokens_per_s']:>10.1f} tok/s "
          f"(backend {report['backend_tokens_per_s']:.1f}, generated "
          f"{report['generated_tokens_per_s']:.1f})  kept {report['kept']}/"
          f"{report['total']}  hits {report['cache_hits']}  variety flagged "
          f"{report['variety_flagged']}", flush=True)
    return row


def variety_eval() -> dict:
    """The pt-PT detector on its held-out test set, by `evaluate_detector` (the definition
    `bench/variety_eval.py` uses: `unknown` counts as wrong)."""
    try:
        from components.variety.detector import load_test_set, make_detector
        from components.variety.report import evaluate_detector
    except ImportError as exc:
        return {"available": False, "error": str(exc)}
    m = evaluate_detector(make_detector("cues"), load_test_set())
    return {"available": True, "set": "held-out test (components/variety/data/"
            "variety_test.jsonl); same figures as bench/results/variety.json 'heldout'",
            **{k: m[k] for k in ("detector", "n", "accuracy", "macro_f1", "coverage",
                                 "accuracy_on_covered", "unknown_rate", "per_class",
                                 "confusion")}}


def _synthetic_source(i: int, target: str) -> str:
    """An English-looking source for labelled sentence `i`, with the target's digits (so
    the number check passes) and no other tie to it."""
    tag = _LETTERS[i % 26] + _LETTERS[i // 26 % 26] + _LETTERS[i // 676 % 26]
    digits = " ".join(digit_runs(target))
    return f"Synthetic English source sentence {tag}, for the variety check {digits}".strip()


def _flag_scores(gold_br: list[bool], flagged: list[bool]) -> dict:
    tp = sum(g and f for g, f in zip(gold_br, flagged, strict=True))
    fp = sum(f and not g for g, f in zip(gold_br, flagged, strict=True))
    fn = sum(g and not f for g, f in zip(gold_br, flagged, strict=True))
    return {"translations": len(gold_br), "pt_br_targets": sum(gold_br),
            "flagged": sum(flagged), "flagged_pt_br": tp, "flagged_pt_pt": fp,
            "precision": round(tp / (tp + fp), 4) if tp + fp else 0.0,
            "recall": round(tp / (tp + fn), 4) if tp + fn else 0.0}


def variety_filter_case(work: Path, settings_for) -> dict:
    """The quality filter on translations with known variety (see the module docstring)."""
    from components.variety.detector import load_samples, load_test_set

    rows = [{**r, "set": "sample"} for r in load_samples()]
    rows += [{**r, "set": "test"} for r in load_test_set()]
    out = work / "variety-filter"
    out.mkdir(parents=True, exist_ok=True)
    records, memory = [], {}
    for i, r in enumerate(rows):
        src = _synthetic_source(i, r["text"])
        memory[src] = r["text"]
        records.append(Record(id=f"variety-{i:04d}", source="variety_check", language="en",
                              task_family="variety", kind="caption", text=src))
    write_records(out / "records.jsonl", records)
    with (out / "memory.jsonl").open("w", encoding="utf-8") as fh:
        for s, t in memory.items():
            fh.write(json.dumps({"source": s, "target": t}, ensure_ascii=False) + "\n")
    settings = settings_for("cache-variety", memory_path=str(out / "memory.jsonl"))
    t0 = time.perf_counter()
    report = translate_file(out / "records.jsonl", settings, out / "run")
    flagged_ids = set()
    for line in (out / "run" / "quarantine.jsonl").read_text(encoding="utf-8").splitlines():
        q = json.loads(line)
        if any("variety_pt_br" in t["reasons"] for t in q["texts"]):
            flagged_ids.add(q["id"])
    flagged = [f"variety-{i:04d}" in flagged_ids for i in range(len(rows))]
    gold_br = [r["label"] == "pt-BR" for r in rows]
    test = [i for i, r in enumerate(rows) if r["set"] == "test"]
    result = {
        "how": "memory backend; targets = labelled pt-PT (good) and pt-BR (bad) sentences "
               "of synthetic English sources; flag = reason variety_pt_br; normalise_br "
               f"{settings.translate.normalise_br}",
        "all": _flag_scores(gold_br, flagged),
        "heldout_test_only": _flag_scores([gold_br[i] for i in test],
                                          [flagged[i] for i in test]),
        "report_variety": report["variety"],
        "wall_seconds": round(time.perf_counter() - t0, 3),
    }
    if result["all"]["flagged"] != report["variety_flagged"]:
        raise RuntimeError(f"flag count mismatch: {result['all']} vs {report['variety']}")
    a, h = result["all"], result["heldout_test_only"]
    print(f"{'variety_filter':<24} flagged {a['flagged']}/{a['translations']} "
          f"(pt-BR targets {a['pt_br_targets']}): precision {a['precision']:.3f}, recall "
          f"{a['recall']:.3f}; held-out only: {h['flagged']}/{h['translations']}, precision "
          f"{h['precision']:.3f}, recall {h['recall']:.3f}", flush=True)
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--repeat", type=int, default=40, help="copies of the seed set (memory)")
    ap.add_argument("--hf-records", type=int, default=240, help="records for the HF cases")
    ap.add_argument("--model", default=None, help="real model: save_pretrained folder or hub id")
    ap.add_argument("--build", choices=("tiny", "base", "1b"), default=None,
                    help="also time a random model of this size built locally")
    ap.add_argument("--backend", choices=("hf_seq2seq", "hf_llm"), default="hf_seq2seq")
    ap.add_argument("--batch-size", type=int, default=None)
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--skip-cpu", action="store_true", help="only the --model/--build cases")
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "results" /
                    "translate_throughput.json")
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

    from components.accel import detect_runtime
    from components.data.synthetic import generate

    rt = detect_runtime()
    work = Path(tempfile.mkdtemp(prefix="amalia-translate-bench-"))
    data = work / "data"
    base = load_settings("ci", overrides={"synthetic": SMALL})
    generate(data, base)
    records, memory = corpus(data, work / "corpus", args.repeat)
    hf_records = work / "corpus" / "hf.jsonl"
    write_records(hf_records, read_records(records)[:args.hf_records])

    def settings(cache: str, **translate):
        return load_settings("ci", overrides={
            "data_dir": str(data), "synthetic": SMALL,
            "translate": {"memory_path": str(memory), "cache_dir": str(work / cache),
                          "max_quarantine_ratio": 1.0, **translate}})

    cases: dict[str, dict] = {}
    variety_filter = None
    if not args.skip_cpu:
        variety_filter = variety_filter_case(work, settings)
        mem = settings("cache-memory")
        cases["memory_cold"] = run_case("memory_cold", records, mem, work / "out")
        cases["memory_warm"] = run_case("memory_warm", records, mem, work / "out")
        tiny = build_model("tiny", "hf_seq2seq", list(load_memory(memory))[:2000],
                           work / "tiny-marian")
        cases["hf_seq2seq_tiny_cpu"] = run_case(
            "hf_seq2seq_tiny_cpu", hf_records,
            settings("cache-tiny", backend="hf_seq2seq", model_id=str(tiny),
                     seed_cache_from_memory=False, batch_size=args.batch_size or 32,
                     max_new_tokens=args.max_new_tokens), work / "out")
    gpu_like = {"backend": args.backend, "seed_cache_from_memory": False,
                "batch_size": args.batch_size or 64, "max_new_tokens": args.max_new_tokens}
    if args.build:
        path = build_model(args.build, args.backend, list(load_memory(memory))[:2000],
                           work / f"built-{args.build}")
        name = f"{args.backend}_{args.build}_random_{rt.device}"
        cases[name] = run_case(name, hf_records, settings(f"cache-{name}", model_id=str(path),
                                                          **gpu_like), work / "out")
    if args.model:
        name = f"{args.backend}_{Path(args.model).name}_{rt.device}"
        cases[name] = run_case(name, hf_records, settings(f"cache-{name}", model_id=args.model,
                                                          **gpu_like), work / "out")

    result = {
        "command": "python " + " ".join([Path(sys.argv[0]).as_posix(), *sys.argv[1:]]),
        "date": dt.datetime.now().isoformat(timespec="seconds"),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                    "runtime": rt.describe()},
        "token_unit": "words and punctuation marks of distinct source texts",
        "cases": cases,
        "variety_detector": variety_eval(),
        "variety_filter": variety_filter,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
