"""A tiny random causal LM with a word-level tokenizer, for the text-generation model tests."""
from __future__ import annotations

from pathlib import Path
from typing import Iterable


def ml100k_item_lines() -> list:
    import recbole

    item_file = Path(recbole.__file__).parent / "dataset_example" / "ml-100k" / "ml-100k.item"
    return item_file.read_text(encoding="utf-8").splitlines()[1:]


def save_tiny_lm(folder: Path, corpus: Iterable[str], seed: int = 0) -> str:
    """Save a random 2-layer Llama (hidden 32) and a word-level tokenizer trained on ``corpus``."""
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    word_level = Tokenizer(models.WordLevel(unk_token="[UNK]"))
    word_level.pre_tokenizer = pre_tokenizers.Whitespace()
    word_level.train_from_iterator(list(corpus), trainers.WordLevelTrainer(special_tokens=["[PAD]", "[UNK]", "</s>"]))
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=word_level, unk_token="[UNK]", pad_token="[PAD]", eos_token="</s>")
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=word_level.get_vocab_size(), hidden_size=32, intermediate_size=64,
                         num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=2,
                         max_position_embeddings=512, pad_token_id=0, eos_token_id=2, bos_token_id=2)
    LlamaForCausalLM(config).save_pretrained(str(folder))
    tokenizer.save_pretrained(str(folder))
    return str(folder)
