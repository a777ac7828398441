"""A text sequential dataset that also carries every item's unique semantic id."""
from __future__ import annotations

from recbole_llm.data.text_dataset import TextSeqDataset
from recbole_llm.quantize.semantic_ids import item_semantic_ids
from recbole_llm.teachers import collaborative_embeddings
from recbole_llm.utils import cache_dir


class SemanticIdDataset(TextSeqDataset):
    """``TextSeqDataset`` plus ``item_semantic_ids`` and ``semantic_id_report``.

    ``item_semantic_ids`` is a long tensor [item_num, rqvae_levels + 1]: the RQ-VAE codes of each
    internal item id followed by its de-duplication code (row 0, padding, is -1).
    ``semantic_id_report`` holds the collision rate before de-duplication and the sizes.
    The tokenizer is trained (or resumed, or read from the cache) while the dataset is built,
    with the ``rqvae_*`` and ``cf_*`` config keys (see properties/model/TIGER.yaml).
    """

    def __init__(self, config):
        super().__init__(config)
        cf_emb = collaborative_embeddings(config, self) if config["rqvae_cf_weight"] > 0 else None
        self.item_semantic_ids, self.semantic_id_report = item_semantic_ids(
            self.item_text_emb, cf_emb, config, cache_dir(config, "semantic_ids"))
