"""Bridges to other libraries' models: Hugging Face transformers (:mod:`lcpress.integrations.hf`)."""
