"""One tiny random causal LM for the tests: a 2-layer Llama with a word-level tokenizer, saved as a
local Hugging Face folder (the shape every LLM-backed model loads offline)."""
from __future__ import annotations

from pathlib import Path
from typing import Iterable, Optional


def ml100k_item_lines() -> list:
    """The lines of RecBole's bundled ml-100k item file (titles and genres), a ready tokenizer corpus."""
    import recbole

    item_file = Path(recbole.__file__).parent / "dataset_example" / "ml-100k" / "ml-100k.item"
    return item_file.read_text(encoding="utf-8").splitlines()[1:]


def save_tiny_llama(folder: Path, corpus: Iterable[str], hidden_size: int = 32, seed: int = 0,
                    max_position_embeddings: int = 512, initializer_range: Optional[float] = None) -> str:
    """Train a word-level tokenizer on ``corpus``, build a random Llama (``seed``) and save both in ``folder``."""
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    word_level = Tokenizer(models.WordLevel(unk_token="[UNK]"))
    word_level.pre_tokenizer = pre_tokenizers.Whitespace()
    word_level.train_from_iterator(list(corpus), trainers.WordLevelTrainer(special_tokens=["[PAD]", "[UNK]", "</s>"]))
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=word_level, unk_token="[UNK]", pad_token="[PAD]", eos_token="</s>")
    torch.manual_seed(seed)
    extra = {} if initializer_range is None else {"initializer_range": initializer_range}
    config = LlamaConfig(vocab_size=word_level.get_vocab_size(), hidden_size=hidden_size, intermediate_size=2 * hidden_size,
                         num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=2,
                         max_position_embeddings=max_position_embeddings, pad_token_id=0, eos_token_id=2,
                         bos_token_id=2, **extra)
    LlamaForCausalLM(config).save_pretrained(str(folder))
    tokenizer.save_pretrained(str(folder))
    return str(folder)
