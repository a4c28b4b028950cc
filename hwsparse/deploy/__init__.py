"""Deploy a found network: channel compaction and runtime artifacts (.onnx, .tflite).

:mod:`~hwsparse.deploy.compact` makes a ticket's dead channels (those the cost model counts as
removed) exactly zero while it trains and then removes them physically, so the compacted network
computes the trained masked network exactly and its live parameter count is the cost model's
``nonzero_params``; :mod:`~hwsparse.deploy.quantize` simulates int8/fp16 runtimes in torch, and
:mod:`~hwsparse.deploy.artifacts` writes the file a runtime reads and verifies it there. The
heavy toolchains (torch-pruning, onnx, onnxruntime, litert-torch) are imported only when used.
"""
