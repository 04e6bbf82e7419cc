"""Training side of fastsca: AudioSet packing, the built-in data set, the DALI log-mel loader, the run."""
