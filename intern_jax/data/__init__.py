"""Data: corpus processing, grain input pipelines and packing into the training batch contract."""
