"""Training: the loop (``train``), torchrun wrapping (``distributed``), SFT data and loss (``sft``) and
AR-to-diffusion adaptation (``adapt``).  Import the module you need; this package imports nothing so that
loading a model never pulls in the training stack."""
