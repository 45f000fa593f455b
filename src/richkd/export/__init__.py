"""Deploying a trained student: the exported-model format and everything that reads or runs it.

Owns: the input spec a model was trained with (size, colour, normalisation) and the image decoding that
reproduces it for `richkd classify` (images.py); the model card (card.py); loading any model file — a
training checkpoint, an exported safetensors + card, or an ONNX file — behind one predictor (load.py);
ONNX export and its ONNX Runtime check (onnx_export.py); the `richkd export` pipeline (exporter.py);
classification of image files (classify.py) and CPU latency/throughput (bench.py).

onnx / onnxruntime are an optional extra (`pip install 'richkd[export]'`): nothing here imports them at
module level, so the core works without them.
"""
