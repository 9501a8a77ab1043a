"""Cost of a pretrained text encoder: training samples/s and peak memory, fine-tuned vs frozen vs text features.

One late-fusion fit per mode, each in its own subprocess (so peak RSS is its own), on an MMSA pickle in BERT layout
(``--data``, default the real MOSI utterance set) or ``synthetic-mosi`` with ``text=bert``, with a BERT-architecture
encoder: ``--model DIR`` (e.g. the all-MiniLM-L6-v2 directory), or by default a randomly initialised model of
MiniLM-L6's shape (6 layers, hidden 384, 12 heads, intermediate 1536, BERT vocabulary), which costs the same.

Modes:

* ``features``: the dataset's text features (no encoder), the reference,
* ``frozen``: ``text_finetune=false``; states cached per sample and ids (modality-missing training reuses them),
* ``finetune``: ``text_finetune=true``, each batch trimmed to its longest token sequence,
* ``finetune-padded``: as ``finetune`` but every batch run at the full length L (the untrimmed cost, for contrast;
  the trimming is switched off by this script only).

samples/s = epochs x train samples / seconds of ``fit`` (one validation scoring per epoch included, as in
``throughput.py``); samples per CPU-second divides by the process's CPU time instead (with one thread, what the fit
cost regardless of other load on the machine). Peak memory: the subprocess's ``ru_maxrss``; on CUDA also ``torch.cuda.max_memory_allocated``.

    python benchmarks/text_finetune.py --limit 256 --epochs 1 --threads 1
    python benchmarks/text_finetune.py --model /path/to/all-MiniLM-L6-v2 --device cuda --limit 1215
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

MOSI_BERT = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "mosi-utterance" / "mosi_utterance_bert.pkl"
MODES = ("features", "frozen", "finetune", "finetune-padded")


def minilm_shaped(path: str) -> str:
    """A random BERT with MiniLM-L6's shape saved to ``path``."""
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=30522, hidden_size=384, num_hidden_layers=6, num_attention_heads=12,
                     intermediate_size=1536, max_position_embeddings=512)
    BertModel(cfg).save_pretrained(path)
    return path


def one(args: argparse.Namespace) -> dict:
    """One fit in this process (the child)."""
    from msabench import text_encoder
    from msabench.data.mmsa import MMSAPickle
    from msabench.data.synthetic import SyntheticMOSI
    from msabench.method import FitContext
    from msabench.plugins import METHODS, PROTOCOLS

    torch.set_num_threads(args.threads)
    ds = MMSAPickle(args.data, text="bert").load() if args.data else SyntheticMOSI(text="bert").load()
    train = ds.train.subset(list(range(min(args.limit, len(ds.train)))))
    valid = ds.valid.subset(list(range(min(args.valid_limit, len(ds.valid)))))
    if args.mode == "finetune-padded":  # benchmark-only: no trimming
        def full_length(self, text_bert, rows, lengths):
            sub = text_bert[rows]
            return self._run(sub[:, 0], sub[:, 1], sub[:, 2])
        text_encoder.TextEncoder._encode = full_length
    params = {"epochs": args.epochs, "patience": 0, "batch_size": args.batch_size}
    if args.mode != "features":
        params.update(text_encoder=args.model, text_finetune=args.mode.startswith("finetune"))
    method = METHODS.get("late-fusion")(**params)
    proto = PROTOCOLS.get(args.protocol)()
    device = torch.device(args.device)
    ctx = FitContext(task=ds.task, seed=1, device=device, amp=device.type == "cuda",
                     valid_masks=proto.masks(valid, ds.fingerprint, [proto.conditions()[0]]), aligned=ds.aligned)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    start, cpu_start = time.perf_counter(), time.process_time()
    method.fit(train, valid, proto.training_schedule(train, 1, ds.fingerprint), ctx)
    seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
    enc = getattr(method, "text_encoder_module_", None)
    lengths = train.text_bert[:, 1].sum(1).float()
    return {
        "mode": args.mode, "train_samples": len(train), "valid_samples": len(valid), "epochs": args.epochs, "fit_s": round(seconds, 2),
        "samples_per_s": round(args.epochs * len(train) / seconds, 1),
        "cpu_s": round(cpu_seconds, 2), "samples_per_cpu_s": round(args.epochs * len(train) / cpu_seconds, 1),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
        "cuda_peak_mb": round(torch.cuda.max_memory_allocated() / 2**20) if device.type == "cuda" else None,
        "encoded_rows": None if enc is None else enc.encoded_rows,
        "median_tokens": float(lengths.median()), "L": int(train.text_bert.shape[-1]),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="encoder directory (default: a random MiniLM-L6-shaped BERT)")
    parser.add_argument("--data", default=str(MOSI_BERT) if MOSI_BERT.exists() else "",
                        help="MMSA pickle with text_bert ('' = synthetic-mosi text=bert)")
    parser.add_argument("--modes", default=",".join(MODES))
    parser.add_argument("--protocol", default="modality-missing")
    parser.add_argument("--limit", type=int, default=256, help="train samples used")
    parser.add_argument("--valid-limit", type=int, default=64, help="validation samples used")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--json", help="write the results here")
    parser.add_argument("--mode", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.mode:  # child
        print(json.dumps(one(args)))
        return
    with tempfile.TemporaryDirectory() as tmp:
        model = args.model or minilm_shaped(os.path.join(tmp, "minilm-shaped"))
        results = []
        for mode in args.modes.split(","):
            cmd = [sys.executable, __file__, "--mode", mode, "--model", model, "--data", args.data,
                   "--protocol", args.protocol, "--limit", str(args.limit), "--valid-limit", str(args.valid_limit), "--epochs", str(args.epochs),
                   "--batch-size", str(args.batch_size), "--threads", str(args.threads), "--device", args.device]
            out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
            results.append(json.loads(out.strip().splitlines()[-1]))
            print(json.dumps(results[-1]), flush=True)
    info = {"machine": platform.processor() or platform.machine(), "torch": torch.__version__,
            "model": args.model or "random MiniLM-L6-shaped BERT", "data": args.data or "synthetic-mosi text=bert",
            "protocol": args.protocol, "threads": args.threads, "load_average_end": os.getloadavg(), "device": args.device, "results": results}
    print("| mode | samples/s (wall) | samples per CPU-s | peak RSS MB | encoded rows | fit s | fit CPU-s |\n"
          "|---|---:|---:|---:|---:|---:|---:|")
    for r in results:
        print(f"| {r['mode']} | {r['samples_per_s']} | {r['samples_per_cpu_s']} | {r['peak_rss_mb']} | "
              f"{r['encoded_rows']} | {r['fit_s']} | {r['cpu_s']} |")
    if args.json:
        Path(args.json).write_text(json.dumps(info, indent=2))


if __name__ == "__main__":
    main()
