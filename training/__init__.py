"""The MirroredStrategy trainer: `python -m training`.

Importing this package does not import TensorFlow; the modules that need it import it themselves.
"""
