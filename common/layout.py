"""Names of the files that one package writes and another reads, in one place."""

DONE_FILE = "_SUCCESS"
"""Completion marker of a step folder (pipelines.core.completion)."""
STAGE_FILE = "stage.json"
"""A trained stage folder's description (training.checkpoint); its presence means trained."""
MANIFEST_FILE = "manifest.json"
MANIFEST_FORMAT = "visualcla-forge/shards"
"""`format` of a rendered shard set's manifest (written by render, checked by publish and training)."""
