"""UniSAR's trainer: RecBole's Trainer ranking each evaluation row's own sampled candidates."""
from __future__ import annotations

from collections import OrderedDict

import torch
from recbole.trainer import Trainer

from recbole_llm.data.search_dataset import CANDIDATES, POSITIVE_INDEX, REC, SEARCH, TARGET_KIND


class UniSARTrainer(Trainer):
    """RecBole's Trainer ranking each valid/test row's fixed candidates (``uni99``).

    ``evaluate`` reports the recommendation targets under RecBole's metric names (``hit@10``,
    ``ndcg@10``...; ``valid_metric`` selects among them) and the search targets with a
    ``search_`` prefix. The eval loaders must be RecBole's plain row loaders (``eval_args.mode:
    full``); the candidates come with the rows.
    """

    def evaluate(self, eval_data, load_best_model=True, model_file=None, show_progress=False):
        if not eval_data:
            return None
        kinds = eval_data._dataset.inter_feat[TARGET_KIND]
        result = OrderedDict()
        for kind, prefix in ((REC, ""), (SEARCH, "search_")):
            if not bool((kinds == kind).any()):
                continue
            self._eval_kind = kind
            part = super().evaluate(eval_data, load_best_model and not result, model_file, show_progress)
            result.update((prefix + key, value) for key, value in part.items())
        return result

    def _full_sort_batch_eval(self, batched_data):
        interaction = batched_data[0]
        interaction = interaction[interaction[TARGET_KIND] == self._eval_kind].to(self.device)
        scores = self.model.score_candidates(interaction, interaction[CANDIDATES])
        positive_u = torch.arange(len(interaction), device=self.device)
        return interaction, scores, positive_u, interaction[POSITIVE_INDEX]
