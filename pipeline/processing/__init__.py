"""One shard inside an actor: read -> model -> encode -> commit, plus captions, scores and the
style-LoRA sources it needs. No Ray here: a test or a bare GPU box calls it directly."""
