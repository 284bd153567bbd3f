"""Backdoor attacks in the prompt-tuning setting, one per file behind one interface (see base.py)."""

from .badclip import BadCLIP, BadCLIPConfig
from .base import Attack, AttackConfig

__all__ = ["Attack", "AttackConfig", "BadCLIP", "BadCLIPConfig"]
