"""seektune.data: read, check and shape training data (no model code here, only tokenizers)."""

IGNORE_INDEX = -100  # the label every loss and metric skips (the HF / PyTorch convention), defined once
