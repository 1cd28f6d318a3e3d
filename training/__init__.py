"""The trainer: vision encoder -> connector -> projection -> LLaMA, two stages, LoRA (issue 6).

Entry points the CLI calls (imports are lazy: `import training` stays cheap):

    from training.run import train_stage
    metrics = train_stage(model_cfg: ModelConfig, stage_name: str, stage_cfg: StageConfig,
                          shards_dir: Path, out_dir: Path, init_from: Path | None = None,
                          resume: bool = False, seed: int | None = None) -> dict
        # shards_dir = runs/<name>/render (data/<stage>/train/*.parquet); out_dir = runs/<name>/train/<stage>;
        # init_from = runs/<name>/train/<previous stage> (stage 2); a finished out_dir is skipped.
        # Keys: steps, final_loss, losses, padding_fraction, samples/tokens per second, parameters, ...

    from training.evaluate import evaluate
    metrics = evaluate(checkpoint: Path, split: Path, cfg: EvalConfig, out: Path | None = None) -> dict
        # {"accuracy", "n", "correct", "examples", ...}; writes eval_predictions.jsonl to `out`

    from training.chat import ChatModel, chat
    response, history = chat(model: ChatModel | Path, image, text: str, history: list | None = None, **generation)

    from training.export import export
    folder = export(checkpoint: Path, fmt: "merged" | "llava-hf", out: Path) -> Path

    from training.checkpoint import find_stage, load_stage  # run folder -> stage folder -> model

Modules: `config` (recipe sections), `model` (VisualCLAConfig, VisualCLAModel), `connectors`,
`build` (recipe -> model/tokenizer/processor; `prepare_base` for `init` models), `tokenizer`
(image tokens; offline demo tokenizer), `data` (masking, streaming shards, length grouping),
`features` (stage-1 feature cache), `lora` (what a stage trains, lr groups), `run` (the recipe on
transformers' Trainer), `checkpoint` (stage folders, merged layout), `export`, `chat`, `evaluate`,
`synthetic` (a tiny shard set for tests and benchmarks). Imports only `templates` of ours.
Distributed: `torchrun --nproc_per_node N` or `accelerate launch --config_file configs/accelerate/*.yaml`.
"""
