"""The run around the loop: orchestration, preflight, the summary and how it is printed."""
