"""Weight files: which ones each model needs, where they come from, and checking them.

- `registry` (+ `registry.toml`): the published files per model (Hub repo and file, place in the
  weights root, size and sha256 where known).
- `sources` (local folder, s3:// mirror) and `hub` (Hugging Face Hub): where files come from.
- `staging`: verified copy of a source to a node-local folder, once per node (file lock).
- `pull`: `restyle weights pull`, to a folder or an s3:// mirror; `manifest`: the
  `restyle-weights.json` a mirror or staged folder carries (sizes, sha256).
- `resolve`: a `--weights` spec -> local root (actors) and per-file sha256 (driver provenance).
- `verify` + `header_checks`: presence, sizes, tensor names/shapes, sha256 of a weights root.
- `inventory`: which files of a root each model loads; `hashing`: cached sha256 per node.
- `tiny`: a complete tiny random-weight weights root in the official on-disk formats, at the
  "tiny" size of `pipeline.models.architecture` (`tiny_diffusers`: the same tiny FLUX as a
  diffusers snapshot; the tokenizers come from `pipeline.models.flux.tiny_tokenizers`).
The expected tensor names and shapes of every official file are `pipeline.models.weight_tables`.
- `cli`: the `restyle weights` commands.
"""
