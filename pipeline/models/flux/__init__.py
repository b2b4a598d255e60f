"""What USO and OmniConsistency share: FLUX latent packing, the BFL/diffusers loaders, the T5 +
CLIP text encoders, and community style LoRAs."""
