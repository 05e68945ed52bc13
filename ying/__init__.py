"""Ying: the M2BIT multi-modal bilingual instruction-tuning pipeline and Ying-VLM, on Ray."""

__version__ = "0.1.0"
