"""Tagging audio with a trained model, in parts that the Python API (fastsca/tagger.py) and the command
`python -m fastsca.tag` (fastsca/tag.py) both call:

- `result`: `TagResult`, what the model says about one file or waveform (the one result type), and `PlotView`;
- `stream`: a file read in blocks, turned into one continuous log-mel and cut into model windows;
- `engine`: `tag_file`, a file streamed through the model in bounded memory (windows, stitching, silence,
  events, embeddings);
- `waveform`: a waveform in memory checked and handed to the engine as the same samples in a file;
- `inputs`: the command's FILE arguments (files, folders, archives) expanded into audio files;
- `outputs`: where the command writes (figure names, checked folders, a standard output a closed pipe silences);
- `table`: the `--table` results file, resumed, recognised, locked and repaired;
- `batch`: many files tagged in a row, each failure one line, every skip counted (the folder tagger).

The names are not imported here, so importing one part (`fastsca.inference` imports `result`) loads only it.
"""
