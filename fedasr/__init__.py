"""fedasr: federated learning of large ASR models, replicated on Flower (arXiv 2408.10443)."""

__version__ = "0.1.0"
