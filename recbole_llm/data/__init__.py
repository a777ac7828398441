"""Plugin Dataset classes."""
from recbole_llm.data.text_dataset import TextSeqDataset

__all__ = ["TextSeqDataset"]
