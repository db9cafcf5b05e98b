"""The scaling report: pure functions from a sweep's results (JSON) to tables, plots and markdown.

`python -m reports RESULTS.json` re-renders a saved run. Nothing here imports TensorFlow, `training`
or `bench`: a report can be made on any machine from the JSON alone.
"""
