"""One thin file per modality; everything they share lives one level up."""
