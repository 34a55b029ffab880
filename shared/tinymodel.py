"""The built-in ``tiny`` model: random weights, so its images are noise, and everything it makes says so."""

TINY_MODEL = "tiny"
# The tiny model's revision (its registry entry's): bump it when its architecture or seed changes, and a new
# folder is built beside the old one.
TINY_MODEL_REVISION = "1"
# The one wording of that fact: the API's model_note, the images' metadata, the worker's and the CLI's notes.
TINY_MODEL_NOTE = "Built-in 'tiny' model with random weights: its images are noise."
