"""Constrained beam search: TIGER's tensorised trie search vs ``transformers`` ``generate``.

    python benchmarks/beam_search_speed.py --dataset Office --config_files dataset/Office/Office.yaml

Trains one TIGER (the yaml's model sizes) on ``--train_batches`` batches, takes ``--users`` test users,
and decodes the same batch with (a) ``TIGER.beam_search`` (per-level dense trie tables, shared
cross-attention memory) and (b) ``T5ForConditionalGeneration.generate(num_beams=B,
num_return_sequences=B, prefix_allowed_tokens_fn=...)`` over the same trie (a dict of valid
prefixes). Both use full-vocabulary log-probabilities masked by the trie, so both should return
the same items with the same scores; the script checks that and reports the timings.
Writes benchmarks/results/beam_search_speed.{json,md}.
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path
from typing import Dict, List, Tuple

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _train_briefly(model, train_data, batches: int, learning_rate: float) -> None:
    """Adam on the first ``batches`` training batches (the speed does not depend on convergence)."""
    optimizer = torch.optim.Adam(model.parameters(), lr=learning_rate)
    model.train()
    for index, interaction in enumerate(train_data):
        if index >= batches:
            break
        optimizer.zero_grad()
        model.calculate_loss(interaction).backward()
        optimizer.step()


def _trained_model(args):
    from recbole_llm.config import Config
    from recbole_llm.quick_start import build

    overrides = {"show_progress": False, "train_batch_size": 256,
                 "beam_size": args.beam, "topk": [10, args.beam], "data_path": args.data_path,
                 "rqvae_epochs": args.rqvae_epochs}
    config = Config(model="TIGER", dataset=args.dataset, config_file_list=args.config_files, config_dict=overrides)
    _, (train_data, _, test_data), model = build(config)
    _train_briefly(model, train_data, args.train_batches, config["learning_rate"])
    return model.eval(), test_data


def _prefix_table(model) -> Dict[Tuple[int, ...], List[int]]:
    """{decoded tokens so far: allowed next tokens} for ``prefix_allowed_tokens_fn``."""
    table: Dict[Tuple[int, ...], set] = {}
    for row in model.item_tokens[1:].tolist():
        for length in range(len(row)):
            table.setdefault(tuple(row[:length]), set()).add(row[length])
    return {prefix: sorted(tokens) for prefix, tokens in table.items()}


def _generate(model, tokens, mask, beam: int, prefixes):
    n_levels = model.item_tokens.shape[1]
    token_to_item = {tuple(row): item for item, row in enumerate(model.item_tokens.tolist()) if item > 0}

    def allowed(_batch_id: int, decoded: torch.Tensor) -> List[int]:
        return prefixes.get(tuple(decoded[1:].tolist()), [])

    output = model.t5.generate(
        input_ids=tokens, attention_mask=mask, num_beams=beam, num_return_sequences=beam,
        max_new_tokens=n_levels, min_new_tokens=n_levels, prefix_allowed_tokens_fn=allowed,
        do_sample=False, length_penalty=0.0, early_stopping=True,
        output_scores=True, return_dict_in_generate=True,
    )
    sequences = output.sequences[:, 1:].view(len(tokens), beam, -1)
    items = torch.tensor([[token_to_item.get(tuple(seq), 0) for seq in user] for user in sequences.tolist()])
    return items, output.sequences_scores.view(len(tokens), beam)


def _timed(function, repeats: int):
    best, result = float("inf"), None
    for _ in range(repeats):
        start = time.perf_counter()
        with torch.no_grad():
            result = function()
        best = min(best, time.perf_counter() - start)
    return best, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default="Office")
    parser.add_argument("--config_files", nargs="*", default=[str(ROOT / "dataset/Office/Office.yaml")])
    parser.add_argument("--data_path", default=str(ROOT / "dataset"))
    parser.add_argument("--train_batches", type=int, default=100)
    parser.add_argument("--rqvae_epochs", type=int, default=100)
    parser.add_argument("--users", type=int, default=64)
    parser.add_argument("--beam", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--out", default=str(ROOT / "benchmarks/results"))
    args = parser.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    model, test_data = _trained_model(args)
    interaction = next(iter(test_data))[0][: args.users]
    tokens, mask = model.encoder_inputs(interaction)
    prefixes = _prefix_table(model)
    encoder_s, _ = _timed(lambda: model.t5.get_encoder()(input_ids=tokens, attention_mask=mask), args.repeats)
    ours_s, (our_items, our_scores) = _timed(lambda: model.beam_search(tokens, mask), args.repeats)
    hf_s, (hf_items, hf_scores) = _timed(lambda: _generate(model, tokens, mask, args.beam, prefixes), args.repeats)
    same_items = sum(len(set(a) & set(b)) for a, b in zip(our_items.tolist(), hf_items.tolist()))
    order = hf_items.argsort(dim=1)
    ours_sorted = our_scores.gather(1, our_items.argsort(dim=1))
    result = {
        "command": "python benchmarks/beam_search_speed.py " + " ".join(
            f"--{k} {' '.join(v) if isinstance(v, list) else v}" for k, v in vars(args).items() if k != "out"),
        "device": "cpu", "threads": torch.get_num_threads(), "dataset": args.dataset,
        "users": int(len(tokens)), "beam": args.beam, "levels": int(model.item_tokens.shape[1]),
        "n_items": int(model.n_items - 1), "t5_parameters": sum(p.numel() for p in model.t5.parameters()),
        "ours_seconds": ours_s, "generate_seconds": hf_s, "speedup": hf_s / ours_s,
        "encoder_only_seconds": encoder_s, "decoding_speedup": (hf_s - encoder_s) / (ours_s - encoder_s),
        "same_items_fraction": same_items / float(our_items.numel()),
        "max_score_difference": float((ours_sorted - hf_scores.gather(1, order)).abs().max())
        if same_items == our_items.numel() else None,
        "versions": {"python": platform.python_version(), "torch": torch.__version__,
                     "transformers": __import__("transformers").__version__},
    }
    text = json.dumps(result, indent=2)
    print(text)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "beam_search_speed.json").write_text(text + "\n")
    (out / "beam_search_speed.md").write_text(
        f"| users | beam | ours (s) | generate (s) | speedup | encoder alone (s) | decoding speedup | same items |\n"
        f"|---|---|---|---|---|---|---|---|\n"
        f"| {result['users']} | {args.beam} | {ours_s:.3f} | {hf_s:.3f} | {result['speedup']:.1f}x | {encoder_s:.3f} | "
        f"{result['decoding_speedup']:.1f}x | {result['same_items_fraction']:.3f} |\n\nCPU ({result['threads']} threads), {args.dataset}, "
        f"`{result['command']}`\n")


if __name__ == "__main__":
    main()
