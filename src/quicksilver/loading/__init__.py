"""Loading and saving models: Hugging Face-layout folders and the bundled registry (``checkpoint``), open
checkpoints of other projects (``families``) and the AR twin as a transformers model (``export_hf``).
Import the module you need; this package imports nothing itself."""
