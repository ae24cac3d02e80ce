"""Serving a trained model outside s3synth: `onnx_export` (`s3synth export-model --format onnx`) and
`onnx_predict` (the stand-alone `predict.py` copied into every export)."""
