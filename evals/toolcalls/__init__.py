"""The tool-calling dataset (generated training split, hand-written held-out split) and its loader."""
