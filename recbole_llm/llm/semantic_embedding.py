"""SAID stage 1: item embeddings learned by making a frozen causal LM reproduce each item's text.

Every item owns a learnable embedding (initialised from its MiniLM text embedding, or randomly).
An MLP projector maps it to ``k`` soft tokens in the LM's input space; the LM reads
``[soft tokens] [prompt] [text tokens]`` and is trained, teacher-forced, to predict the text
tokens (cross-entropy over the text positions only, ending with EOS). The LM stays frozen: only
the item embeddings (SparseAdam, so an item moves only when it is in the batch) and the projector
(AdamW) learn.

Convergence. ``said_epochs`` is a maximum. A fixed, seeded sample of ``said_eval_items`` items
(at most a quarter of the catalogue) is held out *from the projector*: their embeddings train
like every other item's (stage 2 needs a learned row for every item, and the paper learns one
for each), but in batches of their own whose projector gradient is discarded. After each epoch
their reconstruction loss (nats/token, no gradient) measures how well the shared projector
decodes embeddings it was never fitted to, which is the part of stage 1 that can over- or
under-fit (each item's own embedding is a free parameter and only memorises). Training stops when
that loss has not improved by ``said_min_delta`` for ``said_patience`` epochs, and the table of
the best epoch (epoch 0, the initial table, included) is the result. The paper (Hu et al., WWW'24
Companion) trains the embeddings and projector on all items with no held-out criterion; the
held-out projector split is this implementation's stopping rule.

Speed. Each epoch shuffles the items, sorts windows of ``50 * said_batch_size`` of them by text
length and cuts batches from the sorted windows, so a batch pads only to its own longest text;
the batch order is shuffled again. The prompt's token embeddings are computed once; a batch's
soft tokens come from one projector call. On CUDA the LM runs under bf16 autocast
(``said_autocast``); on a CPU nothing changes.

Data parallel. Under ``torch.distributed`` every rank draws the same batches; rank ``r`` runs
the LM forward and backward on items ``r, r + w, ...`` of each (length-sorted) batch only. The
loss is normalised by the batch's token count over all ranks, the projector's gradients and the
batch's embedding-row gradients are summed with ``all_reduce``, and every rank applies the same
optimizer steps, so all ranks hold the same projector and table and the result equals one
process's up to float rounding. Rank 0 writes the table (the stage runs ``collective=True``).

The result, an array [item_num, d] (row 0 = padding, zeros), is the ``said_stage1`` stage
(:mod:`recbole_llm.stages`) keyed by the texts, the initial table, the LM's content and the
settings; training checkpoints every ``said_save_steps`` batches and at each epoch's end, and
resumes from the last checkpoint (mid-epoch or between epochs).
"""
from __future__ import annotations

import contextlib
import logging
import resource
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from recbole_llm.llm.loader import DEFAULT_CAUSAL_LM, llm_identity, load_causal_lm
from recbole_llm.stages import Checkpoint, Stage, world as _world

logger = logging.getLogger(__name__)

EMBEDDING_INITS = ("text", "random")
BUCKET_BATCHES = 50  # batches per length-sorted window: a batch pads to its own longest text


@dataclass(frozen=True)
class Stage1Settings:
    """Stage-1 hyper-parameters (config keys ``said_*``, see properties/model/SAID.yaml)."""

    llm: str = DEFAULT_CAUSAL_LM
    embedding_size: int = 384
    embedding_init: str = "text"
    soft_tokens: int = 2
    projector_hidden: int = 1024
    prompt: str = ""
    max_text_tokens: int = 32
    epochs: int = 1
    patience: int = 2
    min_delta: float = 0.01
    batch_size: int = 32
    learning_rate: float = 1e-3
    item_emb_learning_rate: float = 1e-2
    autocast: bool = True
    save_steps: int = 50
    eval_items: int = 256
    seed: int = 2020

    _POSITIVE = ("embedding_size", "soft_tokens", "projector_hidden", "max_text_tokens", "epochs", "patience",
                 "batch_size", "save_steps", "eval_items")
    _KEYS = {
        "llm": "said_llm", "embedding_size": "said_embedding_size", "embedding_init": "said_embedding_init",
        "soft_tokens": "said_soft_tokens", "projector_hidden": "said_projector_hidden",
        "prompt": "said_prompt", "max_text_tokens": "said_max_text_tokens", "epochs": "said_epochs",
        "patience": "said_patience", "min_delta": "said_min_delta",
        "batch_size": "said_batch_size", "learning_rate": "said_learning_rate",
        "item_emb_learning_rate": "said_item_emb_learning_rate", "autocast": "said_autocast",
        "save_steps": "said_save_steps", "eval_items": "said_eval_items", "seed": "seed",
    }

    @classmethod
    def from_config(cls, config) -> "Stage1Settings":
        """Settings from a RecBole config; a missing key keeps its default."""
        values = {field: config[key] for field, key in cls._KEYS.items() if config[key] is not None}
        settings = cls(**values)
        settings.validate()
        return settings

    def validate(self) -> None:
        if self.embedding_init not in EMBEDDING_INITS:
            raise ValueError(f"said_embedding_init must be one of {EMBEDDING_INITS}, got {self.embedding_init!r}")
        for field in self._POSITIVE:
            value = getattr(self, field)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"{self._KEYS[field]} must be a positive integer, got {value!r}")
        if self.learning_rate <= 0 or self.item_emb_learning_rate <= 0:
            raise ValueError("said_learning_rate and said_item_emb_learning_rate must be positive")
        if not isinstance(self.min_delta, (int, float)) or isinstance(self.min_delta, bool) or self.min_delta < 0:
            raise ValueError(f"said_min_delta must be a number >= 0 (nats/token), got {self.min_delta!r}")
        if not isinstance(self.autocast, bool):
            raise ValueError(f"said_autocast must be true or false, got {self.autocast!r}")

    def cache_parts(self) -> Dict[str, Any]:
        """The settings that change the learned table (not checkpointing, not the LM's name)."""
        parts = asdict(self)
        for field in ("save_steps", "llm"):
            parts.pop(field)
        return parts


class SoftTokenProjector(nn.Module):
    """Item embeddings [item_num, d] and an MLP mapping each to ``k`` LM input vectors."""

    def __init__(self, initial_table: torch.Tensor, hidden: int, soft_tokens: int, lm_width: int):
        super().__init__()
        self.soft_tokens = soft_tokens
        self.lm_width = lm_width
        self.item_embedding = nn.Embedding.from_pretrained(initial_table.clone(), freeze=False, sparse=True)
        self.mlp = nn.Sequential(
            nn.Linear(initial_table.shape[1], hidden),
            nn.GELU(),
            nn.Linear(hidden, soft_tokens * lm_width),
        )

    def project(self, rows: torch.Tensor) -> torch.Tensor:
        """Soft tokens [B, k, lm_width] of the item embeddings ``rows`` [B, d]."""
        return self.mlp(rows).view(-1, self.soft_tokens, self.lm_width)

    def forward(self, item_ids: torch.Tensor) -> torch.Tensor:
        """Soft tokens [B, k, lm_width] of the items ``item_ids`` [B]."""
        return self.project(self.item_embedding(item_ids))


class TextTargets:
    """Every item's text as LM token ids [item_num, T] (right-padded, EOS-terminated), a mask and
    the lengths [item_num]."""

    def __init__(self, texts: Sequence[str], tokenizer, max_tokens: int):
        eos = tokenizer.eos_token_id
        body = max_tokens - 1 if eos is not None else max_tokens
        rows = []
        for text in texts:
            ids = tokenizer(text, add_special_tokens=False, truncation=True, max_length=body)["input_ids"][:body]
            rows.append(ids + ([eos] if eos is not None else []))
        width = max(1, max(len(row) for row in rows))
        self.ids = torch.zeros(len(rows), width, dtype=torch.long)
        self.mask = torch.zeros(len(rows), width, dtype=torch.bool)
        for index, row in enumerate(rows):
            self.ids[index, : len(row)] = torch.tensor(row, dtype=torch.long)
            self.mask[index, : len(row)] = True
        self.lengths = self.mask.sum(dim=1)

    def to(self, device) -> "TextTargets":
        self.ids, self.mask, self.lengths = self.ids.to(device), self.mask.to(device), self.lengths.to(device)
        return self


class ReconstructionObjective(nn.Module):
    """Teacher-forced cross-entropy of the item texts given the soft tokens (and the prompt)."""

    def __init__(self, lm, tokenizer, projector: SoftTokenProjector, targets: TextTargets, prompt: str,
                 autocast: bool = True):
        super().__init__()
        self.lm = lm
        self.projector = projector
        self.targets = targets
        device = lm.get_input_embeddings().weight.device
        self.autocast = autocast and device.type == "cuda" and torch.cuda.is_bf16_supported()
        prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"] if prompt else []
        with torch.no_grad():
            prompt_tensor = torch.tensor(prompt_ids, dtype=torch.long, device=device)
            self.register_buffer("prompt_embedding", lm.get_input_embeddings()(prompt_tensor), persistent=False)

    def _precision(self):
        if self.autocast:
            return torch.autocast(device_type="cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def summed_loss(self, item_ids: torch.Tensor, rows: Optional[torch.Tensor] = None) -> Tuple[torch.Tensor, int]:
        """Summed token cross-entropy of the texts of ``item_ids`` [B] and their token count.

        ``rows`` [B, d] are the items' embeddings (default: the table's rows). The batch is padded
        to its own longest text only.
        """
        if rows is None:
            rows = self.projector.item_embedding.weight[item_ids]
        width = int(self.targets.lengths[item_ids].max())
        tokens, mask = self.targets.ids[item_ids, :width], self.targets.mask[item_ids, :width]
        batch = len(item_ids)
        with self._precision():
            soft = self.projector.project(rows)
            prefix = soft.shape[1] + self.prompt_embedding.shape[0]
            with torch.no_grad():
                text = self.lm.get_input_embeddings()(tokens)
            prompt = self.prompt_embedding.unsqueeze(0).expand(batch, -1, -1)
            inputs = torch.cat([soft, prompt.to(soft.dtype), text.to(soft.dtype)], dim=1)
            attention = torch.cat([torch.ones(batch, prefix, dtype=torch.long, device=mask.device), mask.long()], dim=1)
            hidden = self.lm.base_model(inputs_embeds=inputs, attention_mask=attention).last_hidden_state
            predicting = hidden[:, prefix - 1 : prefix - 1 + width]  # position t predicts text token t
            logits = self.lm.get_output_embeddings()(predicting[mask])
        loss = nn.functional.cross_entropy(logits.float(), tokens[mask], reduction="sum")
        return loss, int(mask.sum())

    def forward(self, item_ids: torch.Tensor) -> torch.Tensor:
        """Mean per-token cross-entropy of the texts of ``item_ids`` [B]."""
        loss, tokens = self.summed_loss(item_ids)
        return loss / max(tokens, 1)


# ------------------------------------------------------------------------------ distribution

def _sum_across_ranks(tensor: torch.Tensor) -> torch.Tensor:
    if _world()[1] > 1:
        torch.distributed.all_reduce(tensor)
    return tensor


def evaluate_reconstruction(objective: ReconstructionObjective, item_ids: torch.Tensor, batch_size: int) -> float:
    """Token-weighted mean reconstruction loss over ``item_ids`` (no gradient), length-bucketed and
    shared among the ranks."""
    rank, world = _world()
    ordered = item_ids[torch.argsort(objective.targets.lengths[item_ids].cpu(), stable=True).to(item_ids.device)]
    mine = ordered[rank::world]
    total = torch.zeros(2, dtype=torch.float64, device=item_ids.device)
    with torch.no_grad():
        for batch in mine.split(batch_size):
            loss, tokens = objective.summed_loss(batch)
            total += torch.tensor([float(loss), tokens], dtype=torch.float64, device=total.device)
    total = _sum_across_ranks(total)
    return float(total[0] / total[1].clamp(min=1))


def epoch_batches(train_ids: torch.Tensor, held_out_ids: torch.Tensor, lengths: torch.Tensor,
                  batch_size: int, seed: int) -> List[Tuple[torch.Tensor, bool]]:
    """One epoch's batches as ``(item_ids, held_out)``: shuffled, cut from length-sorted windows of
    ``BUCKET_BATCHES`` batches, in shuffled order; held-out items form batches of their own."""
    generator = torch.Generator().manual_seed(seed)
    lengths = lengths.cpu()
    batches: List[Tuple[torch.Tensor, bool]] = []
    for ids, held_out in ((train_ids, False), (held_out_ids, True)):
        shuffled = ids[torch.randperm(len(ids), generator=generator)]
        for window in shuffled.split(batch_size * BUCKET_BATCHES):
            window = window[torch.argsort(lengths[window], stable=True)]
            batches += [(batch, held_out) for batch in window.split(batch_size)]
    return [batches[i] for i in torch.randperm(len(batches), generator=generator).tolist()]


def split_held_out(item_count: int, eval_items: int, seed: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """Items 1..item_count-1 split into (projector-training ids, held-out ids): a seeded sample of
    ``eval_items`` held out, at most a quarter of the items (at least one)."""
    items = torch.arange(1, item_count)
    held = min(eval_items, max(1, len(items) // 4))
    order = torch.randperm(len(items), generator=torch.Generator().manual_seed(seed))
    return items[order[held:]].sort().values, items[order[:held]].sort().values


# ---------------------------------------------------------------------------------- training

class _Trainer:
    """The training loop of stage 1 over one (possibly sharded) set of batches."""

    def __init__(self, objective: ReconstructionObjective, settings: Stage1Settings, checkpoint: Checkpoint,
                 show_progress: bool):
        self.objective = objective
        self.projector = objective.projector
        self.table = self.projector.item_embedding.weight
        self.settings = settings
        self.checkpoint = checkpoint
        self.show_progress = show_progress
        self.rank, self.world = _world()
        self.embedding_optimizer = torch.optim.SparseAdam([self.table], lr=settings.item_emb_learning_rate)
        self.projector_optimizer = torch.optim.AdamW(self.projector.mlp.parameters(), lr=settings.learning_rate)

    def step(self, batch: torch.Tensor, held_out: bool) -> Tuple[float, int]:
        """One optimizer step on the whole ``batch`` (this rank computes its slice); returns the
        batch's summed loss and token count over all ranks."""
        mine = slice(self.rank, None, self.world)
        rows = self.table.detach()[batch[mine]].clone().requires_grad_(True)
        total_tokens = int(self.objective.targets.lengths[batch].sum())
        self.projector_optimizer.zero_grad(set_to_none=False)
        self.table.grad = None
        loss_sum = torch.zeros((), device=self.table.device)
        if len(rows):
            loss_sum, _ = self.objective.summed_loss(batch[mine], rows)
            (loss_sum / total_tokens).backward()
        row_grads = torch.zeros(len(batch), self.table.shape[1], device=self.table.device)
        if rows.grad is not None:
            row_grads[mine] = rows.grad
        _sum_across_ranks(row_grads)
        self.table.grad = torch.sparse_coo_tensor(batch.unsqueeze(0), row_grads, self.table.shape,
                                                  check_invariants=False)
        self.embedding_optimizer.step()
        if not held_out:
            for parameter in self.projector.mlp.parameters():
                if parameter.grad is None:
                    parameter.grad = torch.zeros_like(parameter)
                _sum_across_ranks(parameter.grad)
            self.projector_optimizer.step()
        return float(_sum_across_ranks(loss_sum.detach().reshape(1).double())), total_tokens

    def state(self, state: Dict[str, Any]) -> Dict[str, Any]:
        return {**state, "projector": self.projector.state_dict(),
                "optimizers": [self.embedding_optimizer.state_dict(), self.projector_optimizer.state_dict()]}

    def restore(self, state: Dict[str, Any]) -> None:
        self.projector.load_state_dict(state["projector"])
        self.embedding_optimizer.load_state_dict(state["optimizers"][0])
        self.projector_optimizer.load_state_dict(state["optimizers"][1])

    def run(self, state: Dict[str, Any], train_ids: torch.Tensor, held_out_ids: torch.Tensor) -> None:
        """Train from ``state``'s epoch and step on, until the maximum epochs or early stopping."""
        settings, lengths = self.settings, self.objective.targets.lengths
        self.projector.train()
        while self.stop_reason(state) is None:
            epoch = state["epoch"]
            batches = epoch_batches(train_ids, held_out_ids, lengths, settings.batch_size, settings.seed + epoch)
            progress = tqdm(total=len(batches), initial=state["step"], disable=not self.show_progress or self.rank != 0,
                            desc=f"SAID stage 1, epoch {epoch + 1}/{settings.epochs}")
            for index in range(state["step"], len(batches)):
                batch, held_out = batches[index]
                start = time.perf_counter()
                loss_sum, tokens = self.step(batch.to(self.table.device), held_out)
                running = state["running"]
                running["seconds"] += time.perf_counter() - start
                running["items"] += len(batch)
                if not held_out:
                    running["loss_sum"] += loss_sum
                    running["tokens"] += tokens
                state["step"] = index + 1
                progress.update(1)
                progress.set_postfix(loss=f"{loss_sum / max(tokens, 1):.3f}")
                if state["step"] % settings.save_steps == 0 and state["step"] < len(batches):
                    self.checkpoint.save(self.state(state))
            progress.close()
            self._end_epoch(state, held_out_ids)
            self.checkpoint.save(self.state(state))

    def _end_epoch(self, state: Dict[str, Any], held_out_ids: torch.Tensor) -> None:
        """Record the epoch's losses, keep the best table, decide whether to stop."""
        settings, running = self.settings, state["running"]
        held_out_loss = evaluate_reconstruction(self.objective, held_out_ids, settings.batch_size)
        state["curve"].append({
            "epoch": state["epoch"] + 1,
            "train_loss": running["loss_sum"] / max(running["tokens"], 1),
            "held_out_loss": held_out_loss,
            "seconds": round(running["seconds"], 2),
            "items_per_second": round(running["items"] / max(running["seconds"], 1e-9), 2),
        })
        state["seconds"] += running["seconds"]
        state["items"] += running["items"]
        state["epoch"], state["step"] = state["epoch"] + 1, 0
        state["running"] = _fresh_running()
        if held_out_loss < state["best_loss"] - settings.min_delta:
            state.update(best_loss=held_out_loss, best_epoch=state["epoch"], bad_epochs=0,
                         best_table=self.table.detach().cpu().clone())
        else:
            state["bad_epochs"] += 1

    def stop_reason(self, state: Dict[str, Any]) -> Optional[str]:
        """Why training is over at ``state`` (None while it goes on)."""
        if state["bad_epochs"] >= self.settings.patience:
            return f"held-out loss did not improve by {self.settings.min_delta} for {self.settings.patience} epochs"
        if state["epoch"] >= self.settings.epochs:
            return f"reached said_epochs ({self.settings.epochs})"
        return None


def _fresh_running() -> Dict[str, float]:
    return {"loss_sum": 0.0, "tokens": 0, "seconds": 0.0, "items": 0}


def _peak_memory_mb(device: torch.device) -> Dict[str, float]:
    peak = {"peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}
    if device.type == "cuda":
        peak["peak_gpu_mb"] = round(torch.cuda.max_memory_allocated(device) / 2**20, 1)
    return peak


def train_semantic_embeddings(
    texts: Sequence[str],
    initial_table: torch.Tensor,
    settings: Stage1Settings,
    checkpoint: Checkpoint,
    device: torch.device,
    llm_cache_dir: Optional[str] = None,
    show_progress: bool = True,
) -> Tuple[np.ndarray, Dict[str, Any]]:
    """Run stage 1; returns the learned table [item_num, d] (row 0 zeros) and training statistics.

    ``texts`` and ``initial_table`` are aligned with RecBole's item ids (row 0 = padding, skipped).
    Under ``torch.distributed`` every rank calls it with the same arguments and gets the same table.
    """
    device = torch.device(device)
    started = time.perf_counter()
    if len(texts) < 3:
        raise ValueError(f"SAID stage 1 needs at least two items besides padding, got {len(texts) - 1}")
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    lm, tokenizer = load_causal_lm(settings.llm, device, llm_cache_dir)
    torch.manual_seed(settings.seed)
    width = lm.get_input_embeddings().weight.shape[1]
    projector = SoftTokenProjector(initial_table, settings.projector_hidden, settings.soft_tokens, width).to(device)
    targets = TextTargets(texts, tokenizer, settings.max_text_tokens).to(device)
    objective = ReconstructionObjective(lm, tokenizer, projector, targets, settings.prompt, settings.autocast)
    trainer = _Trainer(objective, settings, checkpoint, show_progress)
    train_ids, held_out_ids = (ids.to(device) for ids in split_held_out(len(texts), settings.eval_items, settings.seed))
    state = checkpoint.load()
    if state is None:
        loss_before = evaluate_reconstruction(objective, held_out_ids, settings.batch_size)
        state = {"epoch": 0, "step": 0, "seconds": 0.0, "items": 0, "running": _fresh_running(),
                 "curve": [], "loss_before": loss_before, "best_loss": loss_before, "best_epoch": 0,
                 "best_table": projector.item_embedding.weight.detach().cpu().clone(), "bad_epochs": 0}
    else:
        trainer.restore(state)
    trainer.run(state, train_ids, held_out_ids)
    stats = {
        "loss_before": state["loss_before"],
        "loss_after": state["best_loss"],  # held-out loss of the kept (best) epoch
        "best_epoch": state["best_epoch"],
        "epochs_run": state["epoch"],
        "stop_reason": trainer.stop_reason(state),
        "curve": state["curve"],
        "eval_items": int(len(held_out_ids)),
        "train_items": int(len(train_ids)),
        "train_seconds": round(state["seconds"], 1),
        "items_per_second": round(state["items"] / max(state["seconds"], 1e-9), 2),
        "processes": _world()[1],
        "wall_seconds_this_run": round(time.perf_counter() - started, 1),  # LM loading and evaluation included
        "device": str(device),
        **_peak_memory_mb(device),
    }
    table = state["best_table"].numpy().astype(np.float32)
    table[0] = 0.0
    return table, stats


def initial_item_table(settings: Stage1Settings, text_embeddings: torch.Tensor) -> torch.Tensor:
    """The starting item table: the MiniLM text embeddings, or N(0, 0.02) with ``seed``."""
    if settings.embedding_init == "text":
        if text_embeddings.shape[1] != settings.embedding_size:
            raise ValueError(
                f"said_embedding_init 'text' starts from the {text_embeddings.shape[1]}-d text embeddings, "
                f"but said_embedding_size is {settings.embedding_size}: make them equal or use 'random'"
            )
        table = text_embeddings.clone().float()
    else:
        generator = torch.Generator().manual_seed(settings.seed)
        table = torch.randn(text_embeddings.shape[0], settings.embedding_size, generator=generator) * 0.02
    table[0] = 0.0
    return table


def semantic_item_embeddings(config, dataset, cache_folder: Path) -> Tuple[torch.Tensor, Dict[str, Any]]:
    """SAID's stage-1 item table [item_num, d] for a TextSeqDataset (read from cache, else learned)
    and its training statistics (per-epoch loss curve, stop reason, items/second, seconds, peak
    memory, settings; ``cached`` tells which). Every rank of a distributed run takes part."""
    settings = Stage1Settings.from_config(config)
    texts = list(dataset.item_texts)
    initial = initial_item_table(settings, dataset.item_text_emb)
    stage = Stage("said_stage1", cache_folder, {
        "texts": texts, "initial_table": initial, "llm": llm_identity(settings.llm), "settings": settings.cache_parts()})

    def compute():
        table, stats = train_semantic_embeddings(
            texts, initial, settings, stage.checkpoint, torch.device(config["device"]),
            llm_cache_dir=config["said_llm_cache_dir"], show_progress=bool(config["show_progress"]),
        )
        logger.info("SAID stage 1: held-out reconstruction loss %.4f -> %.4f (epoch %d of %d run; %s)",
                    stats["loss_before"], stats["loss_after"], stats["best_epoch"], stats["epochs_run"],
                    stats["stop_reason"])
        return table, {**stats, "settings": asdict(settings)}

    table = stage.run(compute, collective=True)
    return torch.from_numpy(table), dict(stage.report)
