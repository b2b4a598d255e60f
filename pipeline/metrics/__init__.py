"""The papers' metrics, pure torch + transformers: embedders per backbone and set distances.

Like `pipeline.models`, nothing here knows about storage, Ray or run folders: each embedder
loads from a local folder its caller resolved (`pipeline.weights.aux_models`) and turns PIL
images (or prompts) into L2-normalised embeddings; `definitions` names every metric, the pair
of images it compares and the reference implementation it follows (docs: README "Scoring a
run"); `sets` holds the set-level distances (FID through torchmetrics, CMMD as its authors
wrote it).
"""
