"""Causal language models, loaded offline, and what is learned through them (SAID's stage 1)."""
from recbole_llm.llm.loader import DEFAULT_CAUSAL_LM, load_causal_lm, resolve_causal_lm

__all__ = ["DEFAULT_CAUSAL_LM", "load_causal_lm", "resolve_causal_lm"]
