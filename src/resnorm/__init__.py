"""resnorm: the companion package of the book *Residual Connections and LayerNorm*.

Everything the notebooks reuse lives here, so that each fact has one home:
norms, residual blocks, attention, the Transformer, the translation task,
training, probes, kernels and the stamped notebook executor.
"""

__version__ = "0.1.0"
