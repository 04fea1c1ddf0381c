"""Everything on disk: a model's flat state, weights directories (Orbax + safetensors +
config.json), PyTorch checkpoints and layouts, and a training run's checkpoints (with the way from
a run to weights). Model-family knowledge (official key names) stays with the models."""
