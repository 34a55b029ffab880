"""The prompt-embedding cache: text embeddings per prompt string, least recently used first out."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch


class PromptEmbeddingCache:
    """Text embeddings per prompt string for SD 1.x/2.x and SDXL pipelines, least recently used first out.

    Every text (prompt or negative prompt) is encoded through the pipeline's own ``encode_prompt`` positive
    path, which for these pipelines computes the same function as its negative path. Missing texts of a batch
    are encoded in one call. Entries live on the device in the text encoder's dtype (SD 1.5: 118 KB each).
    """

    def __init__(self, pipe: Any, device: torch.device, size: int) -> None:
        self._pipe = pipe
        self._device = device
        self._size = size
        self._xl = _is_sdxl(pipe)
        self._entries: OrderedDict[str, tuple[torch.Tensor, torch.Tensor | None]] = OrderedDict()
        self.hits = 0
        self.misses = 0

    @staticmethod
    def supports(pipe: Any) -> bool:
        from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

        return isinstance(pipe, StableDiffusionPipeline | StableDiffusionXLPipeline)

    def __len__(self) -> int:
        return len(self._entries)

    def pipeline_kwargs(self, prompts: Sequence[str], negatives: Sequence[str]) -> dict[str, torch.Tensor]:
        """The ``prompt_embeds``/``negative_prompt_embeds`` (and SDXL pooled) arguments for one call."""
        import torch

        wanted = list(dict.fromkeys([*prompts, *negatives]))
        missing = [text for text in wanted if text not in self._entries]
        self.hits += len(wanted) - len(missing)
        self.misses += len(missing)
        fresh = dict(zip(missing, self._encode(missing), strict=True)) if missing else {}
        rows = {text: fresh[text] if text in fresh else self._entries[text] for text in wanted}
        for text, row in fresh.items():
            self._entries[text] = row
        for text in wanted:
            self._entries.move_to_end(text)
        while len(self._entries) > self._size:
            self._entries.popitem(last=False)

        kwargs = {
            "prompt_embeds": torch.stack([rows[p][0] for p in prompts]),
            "negative_prompt_embeds": torch.stack([rows[n][0] for n in negatives]),
        }
        if self._xl:
            kwargs["pooled_prompt_embeds"] = torch.stack([_pooled(rows[p]) for p in prompts])
            kwargs["negative_pooled_prompt_embeds"] = torch.stack([_pooled(rows[n]) for n in negatives])
        return kwargs

    def _encode(self, texts: list[str]) -> list[tuple[torch.Tensor, torch.Tensor | None]]:
        import torch

        pipe = self._pipe
        with torch.no_grad():
            if self._xl:
                embeds, _neg, pooled, _neg_pooled = pipe.encode_prompt(
                    prompt=texts, device=self._device, num_images_per_prompt=1, do_classifier_free_guidance=False
                )
                return [(embeds[i].clone(), pooled[i].clone()) for i in range(len(texts))]
            embeds, _neg = pipe.encode_prompt(texts, self._device, 1, False)
            return [(embeds[i].clone(), None) for i in range(len(texts))]


def _pooled(row: tuple[torch.Tensor, torch.Tensor | None]) -> torch.Tensor:
    assert row[1] is not None
    return row[1]


def _is_sdxl(pipe: Any) -> bool:
    from diffusers import StableDiffusionXLPipeline

    return isinstance(pipe, StableDiffusionXLPipeline)
