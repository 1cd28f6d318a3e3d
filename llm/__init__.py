"""One OpenAI-compatible chat-completions client layer, shared by translation and generation.

    client = ChatClient(config, ledger, section="generate")
    completion = await client.complete(messages, estimate=tokens)

`config.py` the endpoint section every user of the layer extends (URL, model, key variable,
limits, retries, prices); `limits.py` concurrency, requests- and tokens-per-minute buckets,
backoff honouring `Retry-After`; `client.py` the request loop (retries, a dead endpoint stops the
run, the key scrubbed from every message); `usage.py` tokens (cached ones too) and cost;
`cache.py` a response cache so a rerun sends nothing, `cached.py` a reply from it or else from the
endpoint; `together.py` many requests at once, results in order; `estimate.py` what a run will cost
before it sends anything. Imports only `common/`; knows nothing of records, images or templates.
"""
