"""HF Inference Endpoints / TGI-compatible proxy in front of vLLM's OpenAI server."""

__version__ = "1.0.0"
