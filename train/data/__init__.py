"""Data for training: shards (HDF5 clips, targets, strong labels), what packs them (manifests, segments, label
CSVs, layouts of other projects), the built-in synthetic set, and what brings clips to the device (sampler,
hold-out splits, the DALI log-mel loader, augmentations). The commands over them (`python -m train.pack`,
`train.convert`, `train.examples`) stay at the top of `train/`."""
