"""The model card template, shipped in the wheel as `hf_cskd.model_cards`."""
