"""Deployment of language models: export to ONNX and run the streaming step, on top of ``lm.compression``.

* ``inference``: a model's factorised layers as products with constant matrices (``inference_form``);
* ``onnx_export``: the streaming step as an ONNX file, float32, int8 or n-bit (``lm export``);
* ``onnx_nbits``: a 2-, 3- or 4-bit model's weights as their codes in the exported graph (``MatMulNBits``);
* ``runtime``: next-word suggestions and text scoring on torch or onnxruntime (``lm predict``, ``lm score``).

The deployment benchmark, which times the study's shapes in every runtime, sits on top of the
study: ``python -m lm.benchmarks.deploy``.
"""
