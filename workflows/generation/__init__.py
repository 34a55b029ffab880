"""Generation: batching jobs, loading a model and running one diffusers call per batch.

Kept empty on purpose: importing ``workflows.generation.batcher`` must not pull in torch.
"""
