"""Tasks fairseq lacks (fairseq's own audio_pretraining / masked_lm / sentence_prediction are reused)."""
