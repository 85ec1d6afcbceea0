"""amalia-vl: train, evaluate and ship AMALIA-VL, a pt-PT vision-language model."""

__version__ = "0.1.0"
