"""Data sources: turn a dataset on disk into the samples table (and an errors table), and decode images."""
