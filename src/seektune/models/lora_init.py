"""What each adapter.init value means to peft (kept free of torch so that config can import it)."""

from __future__ import annotations


def mutates_base(init: str) -> bool:
    """Whether this adapter.init changes the base weights when the adapter is created: PiSSA (any form) moves the
    top-r singular part of each weight into the adapter, OLoRA the first r columns of its QR decomposition."""
    return init == "olora" or init.startswith("pissa")


def peft_init(init: str):
    """adapter.init -> peft's init_lora_weights."""
    return True if init == "default" else init
