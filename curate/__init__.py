"""curate: offline dataset curation for contrastive pre-training over WebDataset shards."""

__version__ = "0.1.0"
