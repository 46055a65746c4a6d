"""seektune: fine-tune local language models and DeepSeek models end to end."""

__version__ = "0.1.0"
