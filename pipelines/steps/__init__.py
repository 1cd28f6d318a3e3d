"""The pipeline steps, one module or folder each, in run order: demo_data, download, translate,
render, publish, train, evaluate. Each declares `STEP` (pipelines.core.step); the flows run the
ones registered in pipelines/orchestration/registry.py."""
