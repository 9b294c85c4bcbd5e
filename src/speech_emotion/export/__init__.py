"""Exports of trained models: ONNX Runtime (``onnx``) and Hugging Face ``pipeline`` folders (``huggingface``)."""
