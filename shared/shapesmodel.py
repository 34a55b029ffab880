"""The built-in ``shapes`` model: trained on pictures of one coloured shape on a plain background.

This module owns what it was taught (its colours, shapes and caption) and the one wording of what it can draw.
The training data (``training/shapes_data.py``) and the tests read them from here.
"""

SHAPES_MODEL = "shapes"
# The shipped weights' revision: bump it whenever models/shapes/ is retrained, with the checksums below.
SHAPES_MODEL_REVISION = "1"
# sha256 of each weight file of models/shapes/: a worker refuses to serve a folder that differs.
SHAPES_MODEL_CHECKSUMS: dict[str, str] = {
    "text_encoder/model.safetensors": "62af11cf8217f483e6ee3165b6d3184837e0697ce8c0085db2dc548923c5d401",
    "unet/diffusion_pytorch_model.safetensors": "603ae018979a8c55e41ebea04851b510a2a2d758916ab22b55d36881ad379eaa",
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
    f"{', '.join(SHAPES_COLOURS)} (prompt: '{shapes_caption('red', 'circle', 'blue')}'), and nothing else."
)
