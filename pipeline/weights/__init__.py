"""Weight files: what each official file must contain, and tiny random-weight stand-ins.

- `architecture`: expected tensor names and shapes of every official safetensors file as a
  function of the model's config, with release presets (verifies a file from its header alone).
- `tiny`: builds a complete tiny random-weight weights root in the official on-disk formats
  (`tiny_tokenizers`: real CLIP/T5 tokenizers trained locally; `tiny_diffusers`: the same tiny
  FLUX as a diffusers snapshot).
"""
