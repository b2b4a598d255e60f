"""The provenance of one finished item, from what the shard processor knows about it: the
manifest row, the request, the model's outcome and the run. The schema (one for every model
and run) is `pipeline.outputs.provenance`; this module only gathers the values."""

from __future__ import annotations

from collections.abc import Mapping

from pipeline.config import RunConfig, code_version
from pipeline.manifests import ManifestItem
from pipeline.models.base import GenerationOutcome, GenerationRequest
from pipeline.outputs.provenance import StyleLoraFacts, provenance
from pipeline.outputs.samples import describe_image_ref
from pipeline.processing.style_loras import StyleLoraResolver
from pipeline.storage.uris import public_uri


def image_ref_uri(ref) -> str | None:
    """An input image as provenance names it: its public URI, or a hash of inline bytes."""
    described = describe_image_ref(ref)
    if described is None or described.startswith("inline:"):
        return described
    return public_uri(described)


def item_provenance(
    *,
    config: RunConfig,
    fingerprint: str,
    weights: dict[str, str],
    random_weights: bool,
    key: str,
    manifest_uri: str,
    item: ManifestItem,
    request: GenerationRequest,
    outcome: GenerationOutcome,
    caption: str,
    scores: Mapping[str, float | None] | None,
    style_loras: StyleLoraResolver,
) -> dict:
    lora = request.style_lora
    facts = None
    if lora is not None:
        facts = StyleLoraFacts(
            name=lora.name,
            source=style_loras.public_reference(item.style_lora or lora.name),
            file=lora.path.name,
            sha256=style_loras.sha256(lora.path),
            scale=lora.scale,
        )
    subject = image_ref_uri(item.subject)
    # Random either way: the run's weights (tiny, random-full, a folder the tiny builder made)
    # or a model that initialised itself randomly (the benchmarks).
    random_weights = random_weights or bool(outcome.parameters.get("random_weights"))
    return provenance(
        item_id=item.id,
        key=key,
        run=config.run,
        fingerprint=fingerprint,
        model=config.model,
        random_weights=random_weights,
        weights=weights,
        parameters={**outcome.parameters, "seed": request.seed},
        prompt=item.prompt,
        caption=caption,
        manifest=public_uri(manifest_uri),
        row=item.source[1],
        subject=subject,
        styles=[uri for uri in map(image_ref_uri, item.styles) if uri],
        style_lora=facts,
        extra=item.extra or {},
        code_version=code_version(),
        scores=scores,
    )
