"""Imaging helpers shared by several tools (template registration, atlases)."""
