"""The built-in ``shapes`` model: trained on pictures of one coloured shape on a plain background.

This module owns what it was taught (its colours, shapes and caption) and the one wording of what it can draw.
The training data (``training/shapes_data.py``) and the tests read them from here.
"""

SHAPES_MODEL = "shapes"
# The shipped weights' revision: bump it whenever models/shapes/ is retrained, with the checksums below.
SHAPES_MODEL_REVISION = "2"
# sha256 of each weight file of models/shapes/: a worker refuses to serve a folder that differs.
SHAPES_MODEL_CHECKSUMS: dict[str, str] = {
    "text_encoder/model.safetensors": "9c5ddd6a30079eac7f9521adb837e9bba62777608171fe43cfabacc701d6ea29",
    "unet/diffusion_pytorch_model.safetensors": "7c6d3bf9cb80f7e2e087fd921e4a12b2865e52c0a6449dbd2b3cf62098f55382",
    "vae/diffusion_pytorch_model.safetensors": "aefc8af0792e6e45394a139ee710c9eb3eebb94d22cec6c0b25b6c0d4c38cde0",
}

# The colours it knows, as the training pictures paint them (sRGB).
SHAPES_COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 220),
    "yellow": (240, 210, 40),
    "white": (245, 245, 245),
    "black": (20, 20, 20),
    "orange": (245, 140, 30),
    "purple": (140, 60, 180),
}
SHAPES_SHAPES: tuple[str, ...] = ("circle", "square", "triangle")
# The caption every training picture can be described by; other phrasings were seen less often.
SHAPES_CAPTION = "a {colour} {shape} on a {background} background"


def shapes_caption(colour: str, shape: str, background: str) -> str:
    """The prompt the shapes model follows best, e.g. ``a red circle on a blue background``."""
    return SHAPES_CAPTION.format(colour=colour, shape=shape, background=background)


# The one wording of what it can draw: the API's model_note, the images' metadata, the worker's and CLI's notes.
SHAPES_MODEL_NOTE = (
    "Built-in 'shapes' model, a small model trained on synthetic pictures: it draws one "
    f"{', '.join(SHAPES_SHAPES[:-1])} or {SHAPES_SHAPES[-1]} in the middle of a plain background, in "
    f"{', '.join(SHAPES_COLOURS)} (prompt: '{shapes_caption('red', 'circle', 'blue')}'; about five prompts in six"
    " come out exactly as asked, docs/models.md), and nothing else."
)
