"""What the web process and the workers agree on: model specs, layer layouts, job states,
job parameters and the JSON artifacts pages read.

Imports neither ``backend`` nor ``workers`` (nor torch), so both sides can depend on it and
it on nothing of theirs; ruff's banned-api rules and tests/backend/test_boundaries.py hold
that line.
"""
