"""Size profiles: named sets of config overrides for a machine class.

``cpu``: small Transformers that make a first result (and the results tables) affordable on a
laptop CPU; ``default``: nothing, i.e. the models' own yaml settings (the papers' sizes, for a
GPU). A profile only fills keys the user left unset: config files, config dicts and
``--key=value`` flags always win.
"""
from __future__ import annotations

from typing import Any, Dict

PROFILE_HELP = ("size profile: 'cpu' small Transformers that answer in minutes on a laptop, 'default' "
                "the models' own yaml (the papers' sizes); explicit --key=value flags still win")

PROFILES: Dict[str, Dict[str, Any]] = {
    "cpu": {
        "hidden_size": 64,
        "inner_size": 128,
        "n_layers": 2,
        "n_heads": 2,
        "MAX_ITEM_LIST_LENGTH": 20,  # stored history per sequence; see DATASET_PROFILES
        "epochs": 30,
        "stopping_step": 5,
        "train_batch_size": 1024,
        "eval_batch_size": 1024,
    },
    "default": {},
}

# Per-model additions to a profile: the generative models size their T5 with their own keys, an
# epoch of theirs costs several of SASRec's on a CPU, and each validation pass runs a beam search
# over every user, so they train fewer epochs and validate less often, at a higher learning rate
# (Office, epoch 2: valid NDCG@10 0.0058 at 0.005 against 0.0028 at the yaml's 0.001).
MODEL_PROFILES: Dict[str, Dict[str, Dict[str, Any]]] = {
    "cpu": {
        model: {"d_model": 64, "d_kv": 16, "num_heads": 4, "d_ff": 256, "num_layers": 2,
                "num_decoder_layers": 2, "train_batch_size": 256, "eval_batch_size": 256,
                "rqvae_epochs": 100, "epochs": 20, "eval_step": 2, "stopping_step": 3,
                "learning_rate": 0.005}
        for model in ("TIGER", "LETTER")
    } | {
        "LLMSeqSim": {"epochs": 0},  # training-free: the table states its evaluation time only
        # the LLM models: small batches that fit SmolLM2-135M activations in CPU memory, one epoch
        "LLMSRec": {"train_batch_size": 2, "eval_batch_size": 8, "llmsrec_title_tokens": 16,
                    "llmsrec_item_batch_size": 32, "epochs": 1},
        "LiteLLM4Rec": {"train_batch_size": 32, "text_fields": ["title"], "text_max_length": 32, "epochs": 1},
    },
    "default": {},
}

# Per-dataset settings that every profile must respect: the pre-split benchmark files of
# Scientific store histories of up to 50 items (the UniSRec/VQ-Rec protocol), and RecBole cannot
# keep the latest items of a longer stored history, so the model must accept all 50.
DATASET_PROFILES: Dict[str, Dict[str, Any]] = {
    "Scientific": {"MAX_ITEM_LIST_LENGTH": 50},
}


def profile_overrides(profile: str, model: str, dataset: str) -> Dict[str, Any]:
    """The overrides ``profile`` sets for ``model`` on ``dataset`` (its per-model and per-dataset
    additions included). Raises ``UserError`` for an unknown profile name."""
    if profile not in PROFILES:
        from recbole_llm.errors import UserError

        raise UserError(f"unknown profile {profile!r}; choose one of: {', '.join(sorted(PROFILES))}")
    return {**PROFILES[profile], **MODEL_PROFILES[profile].get(model, {}), **DATASET_PROFILES.get(dataset, {})}


def job_overrides(profile: str, model: str, dataset: str, extra: Dict[str, Any]) -> Dict[str, Any]:
    """A job's config: the profile, its per-model and per-dataset additions, then ``extra`` values."""
    return {**profile_overrides(profile, model, dataset), **extra}
