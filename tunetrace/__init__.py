"""tunetrace: predict which gated-MLP neurons a fine-tune will recruit, and audit what it changed."""

__version__ = "0.1.0"
