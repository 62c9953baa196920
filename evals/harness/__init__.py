"""Scripted dialogue evals: YAML scenarios run against the real agent, scored, and reported.

`schema` defines a scenario, `loading` reads YAML with file/line errors, `runner` plays the
scenarios through `Agent.run` (the UI's code path), `checks` scores each turn, `metrics`
aggregates, `report` writes JSON/Markdown/HTML and compares runs, `cli` is `scanchat eval`.
"""
