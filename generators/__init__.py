"""Chinese instruction data generated from an image's annotations (and the image itself) by any
OpenAI-compatible model: LLaVA's conversation / detail / reasoning data, in Chinese.

Knows nothing of pipelines: `context.py` what the model is told about an image, `prompts/` the
versioned prompts and few-shot examples, `reply.py` strict parsing of the JSON reply, `checks.py`
the quality checks, `generator.py` the cache-first request loop over `llm.ChatClient`.
"""
