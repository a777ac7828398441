"""Building blocks shared by the plugin's Transformer models (not a model: files starting with
``_`` are not registered)."""
from __future__ import annotations

from recbole.model.layers import TransformerEncoder
from torch import nn


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


def init_weights(module: nn.Module, std: float) -> None:
    """Normal(0, ``std``) linear and embedding weights (padding rows zero), zero biases, unit LayerNorm."""
    if isinstance(module, (nn.Linear, nn.Embedding)):
        module.weight.data.normal_(mean=0.0, std=std)
        if isinstance(module, nn.Embedding) and module.padding_idx is not None:
            module.weight.data[module.padding_idx].zero_()
    elif isinstance(module, nn.LayerNorm):
        module.bias.data.zero_()
        module.weight.data.fill_(1.0)
    if isinstance(module, nn.Linear) and module.bias is not None:
        module.bias.data.zero_()
