"""Choose a reply-inversion question wording on the TRAIN split only (REPRODUCTION.md, reply inversion).

The paper's question (built-in ``inversion_questions`` row 0) can work poorly on a small model: if the unsteered
model answers 'No' to harmful requests too, steering has nothing to flip. This script asks every train-split
wording (rows whose split is ``train``) about the built-in harmful and harmless TRAIN prompts, unsteered, and
reports per wording the 'Certainly' rate on harmful and the 'No' rate on harmless prompts (the task's two correct
answers) and their mean, the balanced accuracy of the model as a judge. The test-split prompts and wordings are
never looked at. The wording with the highest balanced accuracy may then be run next to the paper's wording
(`reproduce reply-inversion --option question=K`), never instead of it.

    python bench/inversion_question_choice.py --model qwen-1.5b --n 48 --out bench/results/inversion-questions-qwen-1.5b.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from engine import atomic  # noqa: E402
from engine import datasets as ds  # noqa: E402
from engine.clusters import normalized  # noqa: E402
from engine.experiments.interventions import score_inversion  # noqa: E402
from engine.models import ModelSpec, load_model  # noqa: E402
from engine.positions import inversion_message, locate  # noqa: E402
from engine.steering import GenerationConfig, generate  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="qwen-1.5b")
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--n", type=int, default=48, help="train prompts per class (seeded sample)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--max-new-tokens", type=int, default=12)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args(argv)
    handle = load_model(ModelSpec(args.model, dtype=args.dtype))
    questions = ds.load_builtin("inversion_questions")
    train_q = [(k, it) for k, it in enumerate(questions.items) if it.split == "train"]
    prompts = {
        "harmful": ds.load_builtin("harmful", "train").sample(args.n, args.seed).instructions(),
        "harmless": ds.load_builtin("harmless", "train").sample(args.n, args.seed).instructions(),
    }
    cfg = GenerationConfig(max_new_tokens=args.max_new_tokens, batch_size=64)
    rows = []
    t0 = time.perf_counter()
    for k, q in train_q:
        rates = {}
        for which, insts in prompts.items():
            items = []
            for inst in insts:
                msg, in_msg, span = inversion_message(normalized(inst), q.instruction)
                items.append(locate(handle.tokenizer, in_msg, user_message=msg, context=span))
            texts = generate(handle, items, None, cfg, stop_fn=lambda t: "ertainly" in t)
            scores = [score_inversion(t) for t in texts]
            valid = [s for s in scores if s != "invalid"]
            want = "certainly" if which == "harmful" else "no"
            rates[which] = {
                "correct": sum(s == want for s in valid) / len(valid) if valid else None,
                "invalid": len(scores) - len(valid),
                "n": len(scores),
            }
        ok = [r["correct"] for r in rates.values() if r["correct"] is not None]
        rows.append(
            {
                "question": k,
                "id": q.id,
                "text": q.instruction,
                "harmful_certainly_rate": rates["harmful"]["correct"],
                "harmless_no_rate": rates["harmless"]["correct"],
                "invalid": rates["harmful"]["invalid"] + rates["harmless"]["invalid"],
                "balanced_accuracy": sum(ok) / len(ok) if ok else None,
            }
        )
        print(json.dumps(rows[-1]), file=sys.stderr)
    best = max(rows, key=lambda r: (r["balanced_accuracy"] or -1, -r["question"]))
    doc = {
        "model": args.model,
        "dtype": args.dtype,
        "split": "train",
        "n_per_class": args.n,
        "rows": rows,
        "chosen": best["question"],
        "seconds": round(time.perf_counter() - t0, 1),
    }
    if args.out:
        atomic.write_json(args.out, doc)
    print(json.dumps(doc, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
