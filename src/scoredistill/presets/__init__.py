"""Presets of every run family: plain dicts of ``key=value`` overrides, each with a one-line
description (``DESCRIPTIONS``) and the family's ``QUICK`` smoke budget. Paper defaults stay in the
objectives and methods; every departure is written in the preset with its reason."""
