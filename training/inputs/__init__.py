"""What the trainer trains on: data sets, the validation split, models."""
