"""auditor: find, review and clean false negatives in embedding-model training sets."""

__version__ = "0.1.0"
