"""A text sequential dataset that also carries every item's unique semantic id."""
from __future__ import annotations

from recbole.data.dataset import SequentialDataset

from recbole_llm.data.text_dataset import TextSeqDataset
from recbole_llm.quantize.semantic_ids import external_semantic_ids, item_semantic_ids, level_sizes_of
from recbole_llm.teachers import collaborative_embeddings
from recbole_llm.utils import cache_dir


class SemanticIdDataset(TextSeqDataset):
    """``TextSeqDataset`` plus ``item_semantic_ids``, ``semantic_id_level_sizes`` and ``semantic_id_report``.

    ``item_semantic_ids`` is a long tensor [item_num, levels + 1]: the codes of each internal item
    id followed by its de-duplication code (row 0, padding, is -1); ``semantic_id_level_sizes``
    the number of codes of each of those levels; ``semantic_id_report`` the collision count before
    de-duplication and the sizes. The codes come from a released LC-Rec/LETTER index when
    ``semantic_id_file`` is set, else from the RQ-VAE tokenizer, trained (or resumed, or read from
    the cache) while the dataset is built with the ``rqvae_*`` and ``cf_*`` config keys (see
    properties/model/TIGER.yaml). With a released index the item texts are not needed: they are
    neither read nor encoded (``item_texts`` and ``item_text_emb`` are None).
    """

    def __init__(self, config):
        index_file = config["semantic_id_file"] if "semantic_id_file" in config else None
        if index_file:
            SequentialDataset.__init__(self, config)
            self.item_texts = self.item_text_emb = None
        else:
            super().__init__(config)
        folder = cache_dir(config, "semantic_ids")
        if index_file:
            item_tokens = self.field2id_token[self.iid_field][1:]
            self.item_semantic_ids, self.semantic_id_report = external_semantic_ids(index_file, item_tokens, folder)
            self.semantic_id_level_sizes = level_sizes_of(self.item_semantic_ids)
        else:
            cf_emb = collaborative_embeddings(config, self) if config["rqvae_cf_weight"] > 0 else None
            self.item_semantic_ids, self.semantic_id_report = item_semantic_ids(self.item_text_emb, cf_emb, config, folder)
            dedup_size = level_sizes_of(self.item_semantic_ids)[-1]
            self.semantic_id_level_sizes = [config["rqvae_codebook_size"]] * config["rqvae_levels"] + [dedup_size]
