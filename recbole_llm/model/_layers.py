"""Building blocks shared by the plugin's Transformer models (not a model: files starting with
``_`` are not registered)."""
from __future__ import annotations

from recbole.model.layers import TransformerEncoder


def transformer_encoder(config, hidden_size: int) -> TransformerEncoder:
    """RecBole's TransformerEncoder sized by the usual SASRec config keys
    (n_layers, n_heads, inner_size, hidden/attn dropout, hidden_act, layer_norm_eps)."""
    return TransformerEncoder(
        n_layers=config["n_layers"],
        n_heads=config["n_heads"],
        hidden_size=hidden_size,
        inner_size=config["inner_size"],
        hidden_dropout_prob=config["hidden_dropout_prob"],
        attn_dropout_prob=config["attn_dropout_prob"],
        hidden_act=config["hidden_act"],
        layer_norm_eps=config["layer_norm_eps"],
    )
