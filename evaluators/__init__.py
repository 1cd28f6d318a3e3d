"""Evaluation suites for trained models: benchmarks, and open-ended answers scored by an LLM judge.

A library layer beside `training/`: pure metrics and readers, no models and no pipeline steps (it
imports `common/`, `llm/` for the judge, and third-party packages). The eval step
(`pipelines/steps/evaluate/`) asks the model and hands the replies to these.

    vqa       VQAv2 accuracy (the official answer normalisation; Chinese character by character),
              exact match, breakdowns by question and answer type
    caption   BLEU-4 and CIDEr-D (pycocoevalcap's pure-Python scorers) on our own tokenisation
              (CJK characters, or words)
    choice    MMBench TSV reader, CircularEval rotations and scoring, reply -> option letter, the prompt
    judge     open-ended answers scored by an LLM judge (LLaVA-Bench's relative score)
    config    `eval.suites` in a recipe
"""
