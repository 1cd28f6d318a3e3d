"""Curation of image-text records before anyone pays to translate them: exact and near-duplicate
images, image size and aspect bounds, caption rules and language, image-text similarity.

Knows nothing of pipelines: `near_dups.py` pHash and the sub-quadratic near-duplicate search,
`text_rules.py` caption checks and language identification, `clip_score.py` CLIP similarity with a
score cache, `report.py` the pictures, `config.py` the recipe section.
"""
