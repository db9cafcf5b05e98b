"""scikit-learn as a child process of the tests sees it: not installed, as in an install of gpudiag
itself (scikit-learn is a test-only dependency, for the digits data set, loaded in pytest's own
process). Keras imports it, when present, for wrappers the project never uses: on every TensorFlow
start, with SciPy behind it, about 1.5 s of a core on a 2-core machine, in each of the dozens of
children the test suite starts. tests/conftest.py puts this folder first on the PYTHONPATH that
every child inherits.
"""

raise ImportError("scikit-learn is hidden from the tests' child processes (tests/fakes/no_sklearn)")
