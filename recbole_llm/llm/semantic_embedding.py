"""SAID stage 1: item embeddings learned by making a frozen causal LM reproduce each item's text.

Every item owns a learnable embedding (initialised from its MiniLM text embedding, or randomly).
An MLP projector maps it to ``k`` soft tokens in the LM's input space; the LM reads
``[soft tokens] [prompt] [text tokens]`` and is trained, teacher-forced, to predict the text
tokens (cross-entropy over the text positions only, ending with EOS). The LM stays frozen: only
the item embeddings (SparseAdam, so an item moves only when it is in the batch) and the projector
(AdamW) learn. The result, an array [item_num, d] (row 0 = padding, zeros), is the ``said_stage1``
stage (:mod:`recbole_llm.stages`) keyed by the texts, the initial table, the LM's content and the
settings; training checkpoints every ``said_save_steps`` batches and resumes from the last one.
"""
from __future__ import annotations

import logging
import resource
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Dict, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from recbole_llm.llm.loader import DEFAULT_CAUSAL_LM, llm_identity, load_causal_lm
from recbole_llm.stages import Checkpoint, Stage

logger = logging.getLogger(__name__)

EMBEDDING_INITS = ("text", "random")


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
    batch_size: int = 32
    learning_rate: float = 1e-3
    item_emb_learning_rate: float = 1e-2
    save_steps: int = 50
    eval_items: int = 256
    seed: int = 2020

    _POSITIVE = ("embedding_size", "soft_tokens", "projector_hidden", "max_text_tokens", "epochs",
                 "batch_size", "save_steps", "eval_items")

    @classmethod
    def from_config(cls, config) -> "Stage1Settings":
        """Settings from a RecBole config; a missing key keeps its default."""
        keys = {
            "llm": "said_llm", "embedding_size": "said_embedding_size", "embedding_init": "said_embedding_init",
            "soft_tokens": "said_soft_tokens", "projector_hidden": "said_projector_hidden",
            "prompt": "said_prompt", "max_text_tokens": "said_max_text_tokens", "epochs": "said_epochs",
            "batch_size": "said_batch_size", "learning_rate": "said_learning_rate",
            "item_emb_learning_rate": "said_item_emb_learning_rate", "save_steps": "said_save_steps",
            "eval_items": "said_eval_items", "seed": "seed",
        }
        values = {field: config[key] for field, key in keys.items() if config[key] is not None}
        settings = cls(**values)
        settings.validate()
        return settings

    def validate(self) -> None:
        if self.embedding_init not in EMBEDDING_INITS:
            raise ValueError(f"said_embedding_init must be one of {EMBEDDING_INITS}, got {self.embedding_init!r}")
        for field in self._POSITIVE:
            value = getattr(self, field)
            if not isinstance(value, int) or value <= 0:
                raise ValueError(f"said_{field} must be a positive integer, got {value!r}")
        if self.learning_rate <= 0 or self.item_emb_learning_rate <= 0:
            raise ValueError("said_learning_rate and said_item_emb_learning_rate must be positive")

    def cache_parts(self) -> Dict[str, Any]:
        """The settings that change the learned table (not checkpointing or evaluation)."""
        parts = asdict(self)
        for field in ("save_steps", "eval_items", "llm"):
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

    def forward(self, item_ids: torch.Tensor) -> torch.Tensor:
        """Soft tokens [B, k, lm_width] of the items ``item_ids`` [B]."""
        return self.mlp(self.item_embedding(item_ids)).view(-1, self.soft_tokens, self.lm_width)


class TextTargets:
    """Every item's text as LM token ids [item_num, T] (right-padded, EOS-terminated) and a mask."""

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

    def to(self, device) -> "TextTargets":
        self.ids, self.mask = self.ids.to(device), self.mask.to(device)
        return self


class ReconstructionObjective(nn.Module):
    """Teacher-forced cross-entropy of the item texts given the soft tokens (and the prompt)."""

    def __init__(self, lm, tokenizer, projector: SoftTokenProjector, targets: TextTargets, prompt: str):
        super().__init__()
        self.lm = lm
        self.projector = projector
        self.targets = targets
        prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"] if prompt else []
        device = lm.get_input_embeddings().weight.device
        with torch.no_grad():
            prompt_tensor = torch.tensor(prompt_ids, dtype=torch.long, device=device)
            self.register_buffer("prompt_embedding", lm.get_input_embeddings()(prompt_tensor), persistent=False)

    def forward(self, item_ids: torch.Tensor) -> torch.Tensor:
        """Mean per-token cross-entropy of the texts of ``item_ids`` [B]."""
        soft = self.projector(item_ids)
        batch, prefix = soft.shape[0], soft.shape[1] + self.prompt_embedding.shape[0]
        tokens, mask = self.targets.ids[item_ids], self.targets.mask[item_ids]
        with torch.no_grad():
            text = self.lm.get_input_embeddings()(tokens)
        prompt = self.prompt_embedding.unsqueeze(0).expand(batch, -1, -1)
        inputs = torch.cat([soft, prompt, text], dim=1)
        attention = torch.cat([torch.ones(batch, prefix, dtype=torch.long, device=mask.device), mask.long()], dim=1)
        hidden = self.lm.base_model(inputs_embeds=inputs, attention_mask=attention).last_hidden_state
        predicting = hidden[:, prefix - 1 : prefix - 1 + tokens.shape[1]]  # position t predicts text token t
        logits = self.lm.get_output_embeddings()(predicting[mask])
        return nn.functional.cross_entropy(logits.float(), tokens[mask])


def evaluate_reconstruction(objective: ReconstructionObjective, item_ids: torch.Tensor, batch_size: int) -> float:
    """Token-weighted mean reconstruction loss over ``item_ids`` (no gradient)."""
    total, count = 0.0, 0
    with torch.no_grad():
        for batch in item_ids.split(batch_size):
            tokens = int(objective.targets.mask[batch].sum())
            total += float(objective(batch)) * tokens
            count += tokens
    return total / max(count, 1)


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
    """
    device = torch.device(device)
    started = time.perf_counter()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    lm, tokenizer = load_causal_lm(settings.llm, device, llm_cache_dir)
    torch.manual_seed(settings.seed)
    width = lm.get_input_embeddings().weight.shape[1]
    projector = SoftTokenProjector(initial_table, settings.projector_hidden, settings.soft_tokens, width).to(device)
    targets = TextTargets(texts, tokenizer, settings.max_text_tokens).to(device)
    objective = ReconstructionObjective(lm, tokenizer, projector, targets, settings.prompt)
    optimizers = [
        torch.optim.SparseAdam(list(projector.item_embedding.parameters()), lr=settings.item_emb_learning_rate),
        torch.optim.AdamW(projector.mlp.parameters(), lr=settings.learning_rate),
    ]
    items = torch.arange(1, len(texts), device=device)
    eval_ids = items[torch.randperm(len(items), generator=torch.Generator().manual_seed(settings.seed))[: settings.eval_items].to(device)]
    state = checkpoint.load()
    if state is None:
        state = {"epoch": 0, "step": 0, "seconds": 0.0, "losses": [],
                 "loss_before": evaluate_reconstruction(objective, eval_ids, settings.batch_size)}
    else:
        projector.load_state_dict(state["projector"])
        for optimizer, optimizer_state in zip(optimizers, state["optimizers"]):
            optimizer.load_state_dict(optimizer_state)
    _train_epochs(objective, optimizers, items, settings, state, checkpoint, show_progress)
    stats = {
        "loss_before": state["loss_before"],
        "loss_after": evaluate_reconstruction(objective, eval_ids, settings.batch_size),
        "eval_items": int(len(eval_ids)),
        "train_items": int(len(items)),
        "train_seconds": round(state["seconds"], 1),
        "wall_seconds_this_run": round(time.perf_counter() - started, 1),  # LM loading and evaluation included
        "mean_train_loss_last_epoch": float(np.mean(state["losses"])) if state["losses"] else None,
        "device": str(device),
        **_peak_memory_mb(device),
    }
    table = projector.item_embedding.weight.detach().cpu().numpy().astype(np.float32)
    table[0] = 0.0
    return table, stats


def _train_epochs(objective, optimizers, items, settings, state, checkpoint, show_progress) -> None:
    """Train (from ``state``'s epoch and step on), checkpointing every ``save_steps`` batches."""
    objective.projector.train()
    while state["epoch"] < settings.epochs:
        order = torch.randperm(len(items), generator=torch.Generator().manual_seed(settings.seed + state["epoch"]))
        batches = items[order.to(items.device)].split(settings.batch_size)
        if state["step"] == 0:
            state["losses"] = []
        progress = tqdm(total=len(batches), initial=state["step"], disable=not show_progress,
                        desc=f"SAID stage 1, epoch {state['epoch'] + 1}/{settings.epochs}")
        for step in range(state["step"], len(batches)):
            start = time.perf_counter()
            loss = objective(batches[step])
            for optimizer in optimizers:
                optimizer.zero_grad()
            loss.backward()
            for optimizer in optimizers:
                optimizer.step()
            state["seconds"] += time.perf_counter() - start
            state["losses"].append(loss.item())
            state["step"] = step + 1
            progress.update(1)
            progress.set_postfix(loss=f"{state['losses'][-1]:.3f}")
            if state["step"] % settings.save_steps == 0:
                checkpoint.save(_training_state(objective, optimizers, state))
        progress.close()
        state["epoch"], state["step"] = state["epoch"] + 1, 0
        checkpoint.save(_training_state(objective, optimizers, state))


def _training_state(objective, optimizers, state) -> Dict[str, Any]:
    return {**state, "projector": objective.projector.state_dict(),
            "optimizers": [optimizer.state_dict() for optimizer in optimizers]}


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
    and its training statistics (reconstruction loss before/after, seconds, peak memory, settings;
    ``cached`` tells which)."""
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
        logger.info("SAID stage 1: reconstruction loss %.4f -> %.4f", stats["loss_before"], stats["loss_after"])
        return table, {**stats, "settings": asdict(settings)}

    table = stage.run(compute)
    return torch.from_numpy(table), dict(stage.report)
