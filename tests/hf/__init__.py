"""Hugging Face transformers export/import (d2v_plugin/hf)."""
