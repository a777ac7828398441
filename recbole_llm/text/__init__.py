"""Item text substrate: assemble each item's text, encode it, cache the embeddings."""
from recbole_llm.text.assemble import assemble_item_texts
from recbole_llm.text.encoder import encode_texts, load_text_encoder, resolve_text_encoder
from recbole_llm.text.features import item_text_embeddings

__all__ = [
    "assemble_item_texts",
    "encode_texts",
    "load_text_encoder",
    "resolve_text_encoder",
    "item_text_embeddings",
]
