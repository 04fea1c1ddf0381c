"""The host side of the input: TFDS sources (``source``), the order of records (``sampler``),
per-record decoding and augmentation (``transforms``), batching through grain (``pipeline``), the
datasets built here (``builders``), and the device-side normalisation (``normalize``).

Import the submodule you need: ``normalize`` and ``transforms`` import without grain and
TensorFlow Datasets (as on an accelerator image that has only jax, flax and optax); ``source``
and ``pipeline`` need them.
"""
