"""Exact data-parallel evaluation for any RecBole trainer.

RecBole shards the evaluation users over the ranks with a ``DistributedSampler``, which pads the
last shards with repeated users, then averages each rank's *rounded* metrics weighted by its
batch count. :class:`ExactDistributedEvaluation` keeps RecBole's sharding (each rank scores only
its users: beam search, candidate ranking and full ranking all run sharded) but drops the padded
repeats and evaluates the gathered per-user results once, so the metrics equal a single-process
evaluation. Before reloading the best checkpoint every rank waits until rank 0 has written it. It is mixed into the trainer class only when the run is distributed
(:func:`distributed_trainer`).
"""
from __future__ import annotations

from functools import lru_cache

import torch
from recbole.data.dataloader import FullSortEvalDataLoader

_ROW_KEYS = ("rec.topk", "rec.meanrank", "rec.score", "rec.items", "data.label")


class ExactDistributedEvaluation:
    """Trainer mixin: sharded full-ranking evaluation whose metrics equal a single process's."""

    def evaluate(self, eval_data, load_best_model=True, model_file=None, show_progress=False):
        if load_best_model and not self.config["single_spec"]:
            torch.distributed.barrier()  # rank 0 may still be writing the best checkpoint
        if self.config["single_spec"] or not isinstance(eval_data, FullSortEvalDataLoader):
            return super().evaluate(eval_data, load_best_model, model_file, show_progress)
        self._eval_samples = eval_data.sample_size
        self._eval_position = 0
        collector = self.eval_collector
        collect = collector.get_data_struct

        def keep_struct():
            self._eval_struct = collect()
            return self._eval_struct

        collector.get_data_struct = keep_struct
        try:
            return super().evaluate(eval_data, load_best_model, model_file, show_progress)
        finally:
            del collector.get_data_struct

    def _full_sort_batch_eval(self, batched_data):
        if not self.config["single_spec"]:
            batched_data = self._without_padding(batched_data)
        return super()._full_sort_batch_eval(batched_data)

    def _without_padding(self, batched_data):
        """Drop the rows the DistributedSampler repeated to even out the shards (always a tail)."""
        interaction, history_index, positive_u, positive_i = batched_data
        world, rank = self.config["world_size"], torch.distributed.get_rank()
        shard = -(-self._eval_samples // world)  # every rank's padded shard size
        start, rows = self._eval_position % shard, len(interaction)  # a trainer may pass over the data twice
        self._eval_position = start + rows
        kept = sum(1 for local in range(start, start + rows) if rank + world * local < self._eval_samples)
        if kept == rows:
            return batched_data
        interaction = interaction[torch.arange(kept)]
        pairs = positive_u < kept
        positive_u, positive_i = positive_u[pairs], positive_i[pairs]
        if history_index is not None:
            history_rows, history_items = history_index
            inside = history_rows < kept
            history_index = (history_rows[inside], history_items[inside])
        return interaction, history_index, positive_u, positive_i

    def _map_reduce(self, result, num_sample):
        """Gather every rank's per-user rows and evaluate them once (RecBole averages per rank)."""
        struct = self._eval_struct
        local = {key: struct[key] for key in _ROW_KEYS if key in struct}
        gathered = [None] * self.config["world_size"]
        torch.distributed.all_gather_object(gathered, local)
        for key in local:
            struct.set(key, torch.cat([part[key] for part in gathered], dim=0))
        return self.evaluator.evaluate(struct)


@lru_cache(maxsize=None)
def distributed_trainer(trainer_class: type) -> type:
    """``trainer_class`` with :class:`ExactDistributedEvaluation` mixed in (same name)."""
    if issubclass(trainer_class, ExactDistributedEvaluation):
        return trainer_class
    return type(trainer_class.__name__, (ExactDistributedEvaluation, trainer_class),
                {"__module__": trainer_class.__module__, "__doc__": trainer_class.__doc__})
