"""Speech recognition app (tfattn): data layer and front end so far; model to come.

Data: `apps.speech.data.load_speech_data` (LJSpeech layout, transcript CSV, TFDS),
`apps.speech.pipeline.make_pipeline` (duration buckets, augmentation), and the corpus
generator `data/make_speech_corpus.py`. Front end: `apps.speech.features`
(`LogMelSpectrogram` in the graph, matching librosa; `SpecAugment`).
"""
