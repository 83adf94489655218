"""nlpops: fine-tune pre-trained transformers and carry each model to a registered, audited ONNX artifact."""

__version__ = "0.1.0"
