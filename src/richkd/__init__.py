"""richkd: knowledge distillation from a fused CNN + vision-language teacher (RichKD)."""

__version__ = "0.4.0"
